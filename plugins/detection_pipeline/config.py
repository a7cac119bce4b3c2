"""The run configuration: one validated, frozen object built once from the DAG's Params.

Every task receives it as a plain dict over XCom (`to_dict`) and rebuilds it with `from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from detection_engine.catalog import DEFAULT_MODEL


class ConfigError(ValueError):
    """A run configuration that must not start a single pod."""


@dataclass(frozen=True)
class RunConfig:
    input_uri: str  # gs:// or local prefix, or a manifest file (.txt/.csv/.parquet) of URIs
    output_uri: str  # gs:// or local prefix; a run writes under {output_uri}/{safe_run_id}/
    warehouse: str  # duckdb:///path/to/file.duckdb | bigquery://project/dataset
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"  # torchvision enum member | state dict path/URI | none
    weights_sha256: str | None = None
    batch_size: int = 8
    score_threshold: float = 0.5
    max_detections: int = 50
    min_size: int | None = None
    max_size: int | None = None
    precision: str = "fp32"  # fp32 | fp16 | bf16
    shard_size: int = 1000  # images per shard (pod)
    max_shards: int = 256  # never more pods than this (and never more than Airflow's max_map_length)
    dedup_mode: str = "uri"  # uri | content
    incremental: bool = False  # skip images this model version already processed in earlier runs
    image: str = "detection-engine:latest"  # container image of inference_image/
    gpu_type: str = "nvidia-l4"  # GKE accelerator label value
    gpu_count: int = 1  # GPUs per pod
    machine_type: str = "g2-standard-8"  # for costing (pricing table key)
    namespace: str = "default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        return cls(**data)
