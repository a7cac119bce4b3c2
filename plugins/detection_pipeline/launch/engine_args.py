"""The engine's command line for one shard, built in one place for both launchers.

The pod passes this list as the container's args (its ENTRYPOINT is `python -m detection_engine`); the local
launcher appends it to `[sys.executable, "-m", "detection_engine"]`. A shard therefore runs with the same
arguments wherever it runs. It is a list, never a shell string, and every option is one `--flag=value`
element, so a URI with spaces, quotes, `;` or `$()` stays one argument and a value that starts with `-` is
never read as a flag.
"""

from __future__ import annotations

from detection_pipeline.config import RunConfig

# RunConfig field -> engine flag. Fields left out here are not the engine's business (listing, sharding,
# warehouse, placement, costing); tests/pipeline/test_engine_args.py fails when a new field is in neither set.
ENGINE_OPTIONS: dict[str, str] = {
    "model": "--model",
    "weights": "--weights",
    "weights_sha256": "--weights-sha256",
    "batch_size": "--batch-size",
    "score_threshold": "--score-threshold",
    "max_detections": "--max-detections",
    "min_size": "--min-size",
    "max_size": "--max-size",
    "precision": "--precision",
    "channels_last": "--channels-last",
    "compile": "--compile",
    "decode_on_device": "--decode-on-device",
    "prefetch_to_device": "--prefetch-to-device",
    "max_image_bytes": "--max-image-bytes",
    "connect_timeout_s": "--connect-timeout-s",
    "read_timeout_s": "--read-timeout-s",
    "image_timeout_s": "--image-timeout-s",
}

NOT_ENGINE_OPTIONS: frozenset[str] = frozenset(
    {
        "input_uri",  # listed by build_manifest; the engine reads its shard's manifest instead
        "output_uri",  # reaches the engine as the run prefix
        "warehouse",
        "shard_size",
        "max_shards",
        "dedup_mode",
        "incremental",
        "ground_truth_uri",  # read by the evaluate step; it only lowers the engine's score threshold
        "eval_score_threshold",
        "image",
        "gpu_type",
        "gpu_count",
        "machine_type",
        "namespace",
        "spot",  # placement and pricing; the engine always commits as it goes and stops cleanly on SIGTERM
    }
)


def engine_arguments(
    config: RunConfig,
    *,
    run_prefix: str,
    run_id: str,
    run_date: str,
    shard_index: int,
    manifest_uri: str,
) -> list[str]:
    """The arguments after `python -m detection_engine` for one shard; optional options are left out when unset."""
    args = [
        _option("--manifest", manifest_uri),
        _option("--output-prefix", run_prefix),
        _option("--run-id", run_id),
        _option("--run-date", run_date),
        _option("--shard-index", shard_index),
    ]
    from detection_pipeline.evaluation import engine_detection_limits  # pyarrow: not at DAG parse time

    values = {field: getattr(config, field) for field in ENGINE_OPTIONS}
    values["score_threshold"], values["max_detections"] = engine_detection_limits(
        config.score_threshold,
        config.max_detections,
        evaluating=config.ground_truth_uri is not None,
        eval_score_threshold=config.eval_score_threshold,
    )
    for field, flag in ENGINE_OPTIONS.items():
        value = values[field]
        if isinstance(value, bool):  # a switch, spelled --flag=true|false so every element is flag=value
            value = "true" if value else "false"
        if value is not None:
            args.append(_option(flag, value))
    return args


def _option(flag: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"{flag}: expected a string or a number, got {type(value).__name__} {value!r}")
    return f"{flag}={value}"
