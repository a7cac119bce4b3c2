"""A model sweep: the same images through several detectors and precisions, compared in one table.

Each (model, precision) is an ordinary run of the batch DAG, triggered with a conf built here, so a sweep
measures exactly what production runs do and every run keeps its own record, report and results. The run id
of each triggered run is derived from the sweep's run id and the combination: re-running the sweep replaces
those runs (and, through the batch DAG's idempotent loads, their rows) instead of adding more.

Every combination is checked up front with the batch DAG's own rules (`RunConfig.from_params` over the batch
DAG's Param defaults and the combination's conf), so a combination that could not run fails `plan`, once,
before any run is triggered. Sizes: `min_size`/`max_size` apply to every resizable model, `model_sizes`
overrides them per model, and fixed-size models (SSD, SSDlite) always run at their own input size: the
sweep passes them no size, and a `model_sizes` entry for one is refused, as RunConfig refuses it.

The table reads the run records from the warehouse (speed, cost and, with ground truth, COCO mAP) and sets
them beside torchvision's published mAP of each model, like torchvision's own model tables. It is one pandas
DataFrame (`comparison_frame`), rendered by pandas as CSV (raw values), Markdown and HTML (readable numbers).
pandas is imported when a table is made, not when the sweep DAG is parsed.
"""

from __future__ import annotations

import copy
import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, get_current_context, task

from detection_engine import catalog, layout, storage
from detection_pipeline.config import FAST_PATH_FIELDS, SIZE_RANGE, RunConfig, param_defaults
from detection_pipeline.errors import PermanentError, at_the_boundary

if TYPE_CHECKING:
    import pandas as pd

BATCH_DAG_ID = "object_detection_batch"
SWEEP_DAG_ID = "detection_model_sweep"

DEFAULT_MODELS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn_v2",
    "ssdlite320_mobilenet_v3_large",
)
DEFAULT_PRECISIONS = ("fp32",)

# Options of the batch DAG a sweep passes to its runs; their Params are the batch DAG's own. The sizes go to
# resizable models only (SIZES).
SIZES = ("min_size", "max_size")
PASS_THROUGH = (
    "input_uri",
    "output_uri",
    "warehouse",
    "weights",
    "batch_size",
    "min_size",
    "max_size",
    "ground_truth_uri",
    "eval_score_threshold",
    *FAST_PATH_FIELDS,  # every run of the sweep with the same fast-path switches
)

# The weights `ModelSpec.published_box_map` was measured with.
_PUBLISHED_WEIGHTS = ("DEFAULT", "COCO_V1")

# Airflow's default allowed_run_id_pattern is ^[A-Za-z0-9_.~:+-]+$; its run_id column holds 250 characters.
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]")
_RUN_ID_MAX = 250
_ENUM_MEMBER = re.compile(r"[A-Z][A-Z0-9_]*")


class SweepError(PermanentError, ValueError):
    """A sweep configuration that must not trigger a single run (or a sweep that ended incomplete)."""


# -- the sweep's Params --------------------------------------------------------------------------


def sweep_params(batch_params: Mapping[str, Any]) -> dict[str, Param]:
    """The sweep DAG's Params: which models and precisions, plus copies of the batch DAG's own Params for
    the options passed through, so both DAGs share one schema and one default for each."""
    params: dict[str, Param] = {
        "models": Param(
            list(DEFAULT_MODELS),
            type="array",
            items={"type": "string", "enum": list(catalog.MODELS)},
            minItems=1,
            uniqueItems=True,
            description="torchvision detectors to compare (catalog names)",
        ),
        "precisions": Param(
            list(DEFAULT_PRECISIONS),
            type="array",
            items={"type": "string", "enum": list(catalog.PRECISIONS)},
            minItems=1,
            uniqueItems=True,
            description="precisions to run each model in (fp16/bf16 need a GPU; CPU runs fall back to fp32)",
        ),
    }
    for name in PASS_THROUGH:
        if name in batch_params:
            base = batch_params[name]
            params[name] = copy.deepcopy(base) if isinstance(base, Param) else Param(base)
    size = {"type": ["null", "integer"], "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1]}
    params["model_sizes"] = Param(
        {},
        type="object",
        propertyNames={"enum": [name for name, spec in catalog.MODELS.items() if spec.resizable]},
        additionalProperties={
            "type": "object",
            "properties": {name: size for name in SIZES},
            "additionalProperties": False,
        },
        description="per-model min_size/max_size overriding the sweep's, e.g. "
        '{"fasterrcnn_resnet50_fpn": {"min_size": 512, "max_size": 853}}; fixed-size models (SSD, SSDlite) '
        "always run at their own size",
    )
    return params


# -- the runs to trigger -------------------------------------------------------------------------


def plan_runs(
    params: Mapping[str, Any],
    sweep_run_id: str,
    *,
    batch_defaults: Mapping[str, Any] | None = None,
    logical_date: datetime | None = None,
) -> list[dict]:
    """One `{"trigger_run_id", "conf"}` per (model, precision), models outermost, in the order given.

    The dicts are the keyword arguments of each mapped TriggerDagRunOperator. Each conf is checked as the
    batch run will check it: `RunConfig.from_params` over `batch_defaults` (the batch DAG's Param defaults)
    and the conf, at `logical_date` (now when not given); the first combination that fails raises SweepError.
    """
    models = _checked_list(params, "models", catalog.MODELS)
    precisions = _checked_list(params, "precisions", catalog.PRECISIONS)
    weights = params.get("weights")
    if len(models) > 1 and isinstance(weights, str) and _is_state_dict(weights):
        raise SweepError(
            f"weights {weights!r} is a state dict, which fits one model; sweep several models with "
            "DEFAULT, COCO_V1 or none"
        )
    model_sizes = _model_sizes(params.get("model_sizes"), models)
    defaults = param_defaults() if batch_defaults is None else dict(batch_defaults)
    when = logical_date or datetime.now(UTC)
    shared = {name: params[name] for name in PASS_THROUGH if name in params and name not in SIZES}
    runs = []
    for model in models:
        sizes = _sizes(params, model, model_sizes.get(model))
        for precision in precisions:
            conf = {**shared, **sizes, "model": model, "precision": precision}
            try:
                RunConfig.from_params({**defaults, **conf}, when)
            except ValueError as err:  # ConfigError, and the weights/URI checks it wraps
                raise SweepError(f"{model} at {precision} cannot run: {err}") from None
            runs.append({"trigger_run_id": trigger_run_id(sweep_run_id, model, precision), "conf": conf})
    return runs


def _model_sizes(value: Any, models: list[str]) -> dict[str, dict]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SweepError(
            f"model_sizes must be an object of model name -> {{min_size, max_size}}, got {value!r}"
        )
    for model, sizes in value.items():
        if model not in models:
            raise SweepError(f"model_sizes: {model!r} is not one of the sweep's models ({', '.join(models)})")
        if not isinstance(sizes, Mapping) or set(sizes) - set(SIZES):
            raise SweepError(f"model_sizes: {model}: give only {' and '.join(SIZES)}, got {sizes!r}")
    return {model: dict(sizes) for model, sizes in value.items()}


def _sizes(params: Mapping[str, Any], model: str, override: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sizes a model's run gets: its override, else the sweep's; none for a fixed-size model, which runs
    at its own size (an override for one is passed on, so RunConfig refuses it by name)."""
    if override is not None:
        return dict(override)
    if not catalog.MODELS[model].resizable:
        return {}
    return {name: params[name] for name in SIZES if name in params}


def trigger_run_id(sweep_run_id: str, model: str, precision: str) -> str:
    """The batch run id of one combination of one sweep run: the same on every re-run of that sweep run."""
    suffix = f"__{model}__{precision}"
    head = _RUN_ID_UNSAFE.sub("_", f"sweep__{sweep_run_id}")
    if len(head) + len(suffix) > _RUN_ID_MAX:
        raise SweepError(f"sweep run id {sweep_run_id!r} is too long to name its runs")
    return head + suffix


def _checked_list(params: Mapping[str, Any], name: str, allowed: Iterable[str]) -> list[str]:
    values = params.get(name)
    if not isinstance(values, list | tuple) or not values:
        raise SweepError(f"{name} must be a non-empty list")
    allowed = list(allowed)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise SweepError(f"unknown {name} {unknown}; use any of {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise SweepError(f"{name} lists the same value twice: {list(values)}")
    return list(values)


def _is_state_dict(weights: str) -> bool:
    """Anything but a weights enum member name (DEFAULT, COCO_V1) or random weights names a file."""
    return weights != catalog.RANDOM_WEIGHTS and not _ENUM_MEMBER.fullmatch(weights)


# -- the comparison table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str  # CSV header, and the key in each row
    header: str  # Markdown/HTML header
    text: Callable[[Any], str]  # how Markdown/HTML show the value


def _fixed(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    return lambda v: "" if v is None else f"{v * scale:.{digits}f}"


def _plain(v: Any) -> str:
    return "" if v is None else str(v)


COLUMNS: tuple[Column, ...] = (
    Column("model", "model", _plain),
    Column("weights", "weights", _plain),
    Column("precision", "precision", _plain),
    Column("box_map", "box mAP", _fixed(1, 100)),
    Column("box_map50", "AP50", _fixed(1, 100)),
    Column("published_box_map", "published mAP", _fixed(1)),
    Column("eval_images", "scored images", _plain),
    Column("images", "images", _plain),
    Column("failed", "failed", _plain),
    Column("images_per_s", "images/s", _fixed(1)),
    Column("images_per_s_per_gpu", "images/s per GPU", _fixed(1)),
    Column("cost_per_1000_images_usd", "$ per 1,000 images", _fixed(4)),
    Column("batch_latency_p50_ms", "batch p50 ms", _fixed(1)),
    Column("batch_latency_p95_ms", "batch p95 ms", _fixed(1)),
    Column("model_load_s", "model load s", _fixed(2)),
    Column("device_name", "device", _plain),
    Column("torch_version", "torch", _plain),
    Column("torchvision_version", "torchvision", _plain),
    Column("cuda_version", "CUDA", _plain),
    Column("run_id", "run id", _plain),
)

# Row keys read straight from the run record under the same name.
_FROM_RECORD = (
    "eval_images",
    "failed",
    "images_per_s",
    "images_per_s_per_gpu",
    "cost_per_1000_images_usd",
    "batch_latency_p50_ms",
    "batch_latency_p95_ms",
    "model_load_s",
    "device_name",
    "torch_version",
    "torchvision_version",
    "cuda_version",
)


def _published_box_map(model: str, weights: str | None) -> float | None:
    spec = catalog.MODELS.get(model)
    return spec.published_box_map if spec is not None and weights in (*_PUBLISHED_WEIGHTS, None) else None


def comparison_rows(plan: Sequence[Mapping], records: Mapping[str, Mapping | None]) -> list[dict]:
    """One row per planned run, in plan order, from its run record (keyed by run id); a run without a
    record still gets its row, with only model, precision and run id, so a failed run is visible."""
    rows = []
    for run in plan:
        conf, run_id = run["conf"], run["trigger_run_id"]
        record = records.get(run_id) or {}
        precision = conf["precision"]
        if record.get("precision") and record["precision"] != precision:
            precision = f"{precision} (ran {record['precision']})"
        weights = conf.get("weights")
        row = {
            "model": conf["model"],
            "weights": record.get("weights_id") or weights,
            "precision": precision,
            "box_map": record.get("coco_map"),
            "box_map50": record.get("coco_map50"),
            "published_box_map": _published_box_map(conf["model"], weights),
            "images": record.get("processed"),
            **{key: record.get(key) for key in _FROM_RECORD},
            "run_id": run_id,
        }
        rows.append({column.key: row[column.key] for column in COLUMNS})
    return rows


def comparison_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """The comparison table: one row per planned run, one column per `COLUMNS` key, values as recorded.

    Columns stay `object`, so an integer column with an empty cell keeps its integers (64, not 64.0)."""
    import pandas as pd

    keys = [c.key for c in COLUMNS]
    return pd.DataFrame([[row[k] for k in keys] for row in rows], columns=keys, dtype=object)


def readable_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: each column's text (mAP in percent, fixed digits) under its header."""
    shown = frame.copy()
    for column in COLUMNS:
        shown[column.key] = frame[column.key].map(
            lambda v, text=column.text: text(None if _missing(v) else v)
        )
    return shown.rename(columns={c.key: c.header for c in COLUMNS})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN


def to_csv(rows: Sequence[Mapping]) -> str:
    """Raw values, one header row of column keys: for spreadsheets and scripts."""
    return comparison_frame(rows).to_csv(index=False, lineterminator="\n")


def to_markdown(rows: Sequence[Mapping], title: str) -> str:
    shown = readable_frame(comparison_frame(rows))
    shown = shown.map(lambda v: v.replace("|", "\\|"))  # a pipe in a value must not split its cell
    shown.columns = [c.replace("|", "\\|") for c in shown.columns]
    table = shown.to_markdown(index=False, tablefmt="pipe", disable_numparse=True)
    return "\n".join([f"# {title}", "", table, "", _FOOTNOTE, ""])


def to_html(rows: Sequence[Mapping], title: str) -> str:
    table = readable_frame(comparison_frame(rows)).to_html(index=False, escape=True, border=0)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
        "td:nth-child(-n+3){text-align:left}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{table}"
        f"<p>{html.escape(_FOOTNOTE)}</p></body></html>\n"
    )


_FOOTNOTE = (
    "box mAP and AP50: COCO metrics of this run against the run's ground truth (empty without one). "
    "published mAP: torchvision's figure on COCO val2017 for the model's COCO_V1 weights. "
    "An empty row means the run left no record."
)


def sweep_prefix(output_uri: str, sweep_run_id: str) -> str:
    return layout.join(output_uri, "sweeps", layout.safe_run_id(sweep_run_id))


def write_comparison(rows: Sequence[Mapping], prefix: str, title: str) -> dict[str, str]:
    """Write comparison.{md,csv,html} under `prefix` (local or gs://); returns their URIs by format."""
    documents = {"markdown": ("md", to_markdown(rows, title)), "csv": ("csv", to_csv(rows))}
    documents["html"] = ("html", to_html(rows, title))
    uris = {}
    for kind, (extension, text) in documents.items():
        uri = layout.join(prefix, f"comparison.{extension}")
        storage.write_atomic(uri, text.encode("utf-8"))
        uris[kind] = uri
    return uris


# -- the sweep DAG's tasks (thin adapters from Airflow's context) ----------------------------------


@task
@at_the_boundary
def plan(batch_defaults: dict) -> list[dict]:
    """Validate every combination as the batch DAG will and name the batch run of each (model, precision).

    `batch_defaults` are the batch DAG's Param defaults, built by the DAG file from the settings it loads."""
    context = get_current_context()
    when = context.get("logical_date") or context["dag_run"].run_after
    return plan_runs(
        dict(context["params"]), context["run_id"], logical_date=when, batch_defaults=batch_defaults
    )


@task(trigger_rule="all_done")
@at_the_boundary
def compare(runs: list[dict], deployment: dict) -> dict[str, str]:
    """Write the comparison table of every planned run, even when some failed (see `compare_runs`)."""
    from detection_pipeline.warehouse import open_warehouse

    context = get_current_context()
    params, sweep_run_id = context["params"], context["run_id"]
    warehouse = open_warehouse(
        params["warehouse"],
        gcp_conn_id=deployment["gcp_conn_id"],
        lock_timeout_s=deployment["warehouse_lock_timeout_s"],
    )
    return compare_runs(
        warehouse,
        runs,
        sweep_prefix(params["output_uri"], sweep_run_id),
        f"Model sweep {sweep_run_id}",
    )


def compare_runs(warehouse, runs: Sequence[Mapping], prefix: str, title: str) -> dict[str, str]:
    """Read each planned run's record, write the table, then fail if any run left no record: the table
    still shows the runs that finished, and a partial sweep is never mistaken for a complete one."""
    records = {run["trigger_run_id"]: warehouse.run_record(run["trigger_run_id"]) for run in runs}
    uris = write_comparison(comparison_rows(runs, records), prefix, title)
    missing = [run_id for run_id, record in records.items() if record is None]
    if missing:
        raise SweepError(
            f"{len(missing)} of {len(runs)} runs left no run record: {', '.join(missing)}; "
            f"the table of the others is at {uris['markdown']}"
        )
    return uris
