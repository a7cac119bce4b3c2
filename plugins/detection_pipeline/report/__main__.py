"""Commands: build one run's report, or the dashboard across runs, from the warehouse's run records.

python -m detection_pipeline.report run --warehouse URI --run-id ID [--run-prefix URI]
python -m detection_pipeline.report dashboard --warehouse URI --out FILE
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from detection_engine import layout
from detection_pipeline.report import ReportError, build_dashboard, build_run_report

if TYPE_CHECKING:
    from detection_pipeline.warehouse import Warehouse

T = TypeVar("T")


class CommandError(Exception):
    """A user error, printed as one line."""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detection_pipeline.report", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="write one run's HTML report beside its files")
    run.add_argument("--warehouse", required=True, help="duckdb:///path.duckdb or bigquery://project/dataset")
    run.add_argument("--run-id", required=True, help="the Airflow run id")
    run.add_argument("--run-prefix", help="the run's files; default {output_uri}/{run id} from its record")
    run.add_argument("--sample-images", type=_count, default=8, help="annotated images in the gallery")

    dashboard = commands.add_parser("dashboard", help="write the dashboard across all recorded runs")
    dashboard.add_argument(
        "--warehouse", required=True, help="duckdb:///path.duckdb or bigquery://project/dataset"
    )
    dashboard.add_argument("--out", required=True, help="output HTML file (local path or gs:// URI)")
    return parser


def _read_warehouse(warehouse_uri: str, read: Callable[[Warehouse], T]) -> T:
    from detection_pipeline.warehouse import open_warehouse

    try:
        warehouse = open_warehouse(warehouse_uri)
    except ValueError as exc:  # a malformed URI: its message already says what is expected
        raise CommandError(str(exc)) from exc
    try:
        return read(warehouse)
    except Exception as exc:  # any backend's failure becomes one line naming the warehouse
        raise CommandError(f"cannot read run records from {warehouse_uri}: {exc}") from exc


def _run_report(args: argparse.Namespace) -> str:
    record = _read_warehouse(args.warehouse, lambda w: w.run_record(args.run_id))
    if record is None:
        raise CommandError(f"no run record for run id {args.run_id!r} in {args.warehouse}")
    prefix = args.run_prefix or layout.run_prefix(record["output_uri"], args.run_id)
    return build_run_report(prefix, record, sample_images=args.sample_images)


def _dashboard(args: argparse.Namespace) -> str:
    records = _read_warehouse(args.warehouse, lambda w: w.runs_frame())
    return build_dashboard(records, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        uri = _run_report(args) if args.command == "run" else _dashboard(args)
    except (CommandError, ReportError, ValueError, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, even for multi-line errors
        return 1
    print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
