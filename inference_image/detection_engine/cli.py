"""`python -m detection_engine`: the command line of docs/architecture.md, and its exit codes.

    0  the shard was processed (error rows included)
    2  bad arguments or unusable input manifest
    3  the model or weights could not be loaded
    4  output could not be written
    5  preempted: stopped cleanly on SIGTERM, finished images committed; a retry resumes where it stopped
    1  anything else (with a traceback: that is a bug or an outage, not a user error)

User errors print one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from datetime import date

from detection_engine.auto_batch import parse_batch_size
from detection_engine.catalog import DEFAULT_MODEL, MODELS, PRECISIONS
from detection_engine.decode import DEFAULT_MAX_PIXELS
from detection_engine.devices import AUTO, parse_devices
from detection_engine.fetch import ShardManifestError
from detection_engine.models import DeviceError, ModelLoadError, ModelOptions
from detection_engine.parts import CommitPolicy, Preempted
from detection_engine.pipeline import PipelineOptions
from detection_engine.redaction import redact_logs
from detection_engine.shard import DEFAULT_SUMMARY_PATH, ShardJob, run_shard
from detection_engine.stop_signal import StopOnSignal
from detection_engine.storage import ReadLimits
from detection_engine.writer import OutputError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_OUTPUT, EXIT_PREEMPTED = 0, 1, 2, 3, 4, 5
PROG = "detection_engine"

log = logging.getLogger(PROG)


class UsageError(Exception):
    """A bad argument; argparse's own errors are routed here so they print one line, not usage + error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _batch_size(text: str) -> int | str:
    try:
        return parse_batch_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _devices(text: str) -> tuple[str, ...]:
    try:
        return parse_devices(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_FAST_PATH_SWITCHES = (
    ("--channels-last", "NHWC convolution weights (a fast path; see BENCHMARKS.md)"),
    (
        "--compile",
        "torch.compile the backbone, dynamic shapes, eager if compiling fails (a fast path; BENCHMARKS.md)",
    ),
    (
        "--prefetch-to-device",
        "stage each batch on the device (copies; JPEG decode) while the batch before runs (a fast path)",
    ),
    (
        "--decode-on-device",
        "decode baseline JPEGs where the model runs (nvJPEG on a GPU, batched), the rest on the CPU (a fast path)",
    ),
)


def _switch(text: str) -> bool:
    """A fast-path switch: bare `--flag` is on; `--flag=true|false` is how the launchers spell it."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def _sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError("must be 64 hexadecimal digits")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    defaults = PipelineOptions()
    p = _Parser(prog=PROG, description="Detect objects in every image of one shard manifest.")
    p.add_argument("--manifest", required=True, help="shard manifest: Parquet with column image_uri, or text")
    p.add_argument("--output-prefix", required=True, help="the run prefix; files go where layout.py says")
    p.add_argument("--run-id", required=True)
    p.add_argument("--run-date", required=True, type=date.fromisoformat, help="YYYY-MM-DD")
    p.add_argument("--shard-index", required=True, type=_non_negative_int)
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), metavar="NAME")
    p.add_argument(
        "--weights", default="DEFAULT", help="torchvision enum member | state dict path/URI | none"
    )
    p.add_argument("--weights-sha256", type=_sha256, default=None, help="verify the state dict file")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=defaults.batch_size,
        help="images per model call, or auto (auto_batch.py: 1 on a CPU, from device memory on CUDA)",
    )
    p.add_argument("--score-threshold", type=_probability, default=0.5)
    p.add_argument("--max-detections", type=_positive_int, default=50)
    p.add_argument("--min-size", type=_positive_int, default=None)
    p.add_argument("--max-size", type=_positive_int, default=None)
    p.add_argument(
        "--devices",
        "--device",
        dest="devices",
        type=_devices,
        default=(AUTO,),
        help="auto (every visible GPU, else the CPU) or a list such as cuda:0,cuda:1; one model replica each",
    )
    for flag, what in _FAST_PATH_SWITCHES:  # bare flag: on; --flag=true|false: as said
        p.add_argument(flag, type=_switch, nargs="?", const=True, default=False, metavar="BOOL", help=what)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16/bf16 under autocast on CUDA, and on a CPU that computes them natively (bf16: AVX512-BF16/AMX); else fp32",
    )
    p.add_argument("--fetch-workers", type=_positive_int, default=defaults.fetch_workers)
    p.add_argument("--decode-workers", type=_positive_int, default=defaults.decode_workers)
    p.add_argument("--prefetch-batches", type=_positive_int, default=defaults.prefetch_batches)
    p.add_argument(
        "--group-window",
        type=_positive_int,
        default=defaults.group_window,
        help="batches' worth of decoded images searched for similar aspect ratios; 1 keeps arrival order",
    )
    p.add_argument("--max-image-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS)
    limits = defaults.read_limits
    p.add_argument(
        "--max-image-bytes", type=_positive_int, default=limits.max_bytes, help="cut off while streaming"
    )
    p.add_argument("--connect-timeout-s", type=_positive_float, default=limits.connect_timeout_s)
    p.add_argument("--read-timeout-s", type=_positive_float, default=limits.read_timeout_s)
    p.add_argument(
        "--image-timeout-s",
        type=_positive_float,
        default=limits.timeout_s,
        help="per-image deadline for fetch and decode: a read past it is one timeout error row",
    )
    commit = CommitPolicy()
    p.add_argument(
        "--commit-every",
        type=_non_negative_int,
        default=commit.every_images,
        help="commit finished images as a part every N images (0: not by count); a retry resumes from them",
    )
    p.add_argument(
        "--commit-every-s",
        type=_non_negative_float,
        default=commit.every_s,
        help="commit finished images as a part every S seconds (0: not by time)",
    )
    p.add_argument("--summary-path", default=DEFAULT_SUMMARY_PATH)
    p.add_argument("--log-interval-s", type=_positive_float, default=30.0)
    p.add_argument("--seed", type=int, default=0, help="seeds random init for --weights none")
    return p


def parse_job(argv: Sequence[str] | None = None) -> ShardJob:
    """Arguments -> a validated ShardJob; raises UsageError."""
    args = build_parser().parse_args(argv)
    if args.min_size and args.max_size and args.min_size > args.max_size:
        raise UsageError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    return ShardJob(
        manifest=args.manifest,
        output_prefix=args.output_prefix,
        run_id=args.run_id,
        run_date=args.run_date,
        shard_index=args.shard_index,
        model=ModelOptions(
            name=args.model,
            weights=args.weights,
            weights_sha256=args.weights_sha256,
            score_threshold=args.score_threshold,
            max_detections=args.max_detections,
            min_size=args.min_size,
            max_size=args.max_size,
            precision=args.precision,
            seed=args.seed,
        ),
        pipeline=PipelineOptions(
            batch_size=args.batch_size,
            fetch_workers=args.fetch_workers,
            decode_workers=args.decode_workers,
            prefetch_batches=args.prefetch_batches,
            group_window=args.group_window,
            max_image_pixels=args.max_image_pixels,
            read_limits=ReadLimits(
                max_bytes=args.max_image_bytes,
                connect_timeout_s=args.connect_timeout_s,
                read_timeout_s=args.read_timeout_s,
                timeout_s=args.image_timeout_s,
            ),
            decode_on_device=args.decode_on_device,
            prefetch_to_device=args.prefetch_to_device,
        ),
        summary_path=args.summary_path,
        log_interval_s=args.log_interval_s,
        commit=CommitPolicy(every_images=args.commit_every, every_s=args.commit_every_s),
        devices=args.devices,
        channels_last=args.channels_last,
        compile=args.compile,
    )


def _user_error(code: int, message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact_logs()  # library log lines (fsspec, gcsfs, aiohttp) and tracebacks carry URLs with their tokens
    try:
        job = parse_job(argv)
        with StopOnSignal() as stop:
            run_shard(job, stop)
    except Preempted as exc:
        return _user_error(EXIT_PREEMPTED, f"preempted: {exc}")
    except (UsageError, ShardManifestError, DeviceError) as exc:
        return _user_error(EXIT_USAGE, str(exc))
    except ModelLoadError as exc:
        return _user_error(EXIT_MODEL, str(exc))
    except OutputError as exc:
        return _user_error(EXIT_OUTPUT, str(exc))
    except Exception:
        log.exception("shard failed")
        return EXIT_FAILED
    return EXIT_OK
