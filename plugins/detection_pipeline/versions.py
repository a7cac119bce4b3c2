"""The Airflow-side versions a run record carries: Airflow, the two providers, this project (the
detection-pipeline distribution, plugins/pyproject.toml), Python.

Read from installed package metadata, so it is cheap and never imports the packages. The engine-side versions
(torch, torchvision, CUDA) come from the shard metrics, written inside the pod that ran the model.
"""

from __future__ import annotations

import platform
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

PROJECT = "detection-pipeline"

DISTRIBUTIONS = {
    "airflow_version": "apache-airflow",
    "google_provider_version": "apache-airflow-providers-google",
    "kubernetes_provider_version": "apache-airflow-providers-cncf-kubernetes",
    "project_version": PROJECT,
}

_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@cache
def pipeline_versions() -> dict[str, str | None]:
    """Keys of schema.RUNS -> version strings; None for a package that is not installed."""
    versions: dict[str, str | None] = {key: _installed(dist) for key, dist in DISTRIBUTIONS.items()}
    versions["project_version"] = versions["project_version"] or _source_tree_version()
    versions["python_version"] = platform.python_version()
    return versions


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _source_tree_version() -> str | None:
    """The version in plugins/pyproject.toml when the package runs from its source tree, not installed."""
    try:
        project = tomllib.loads(_PYPROJECT.read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None
    return project.get("version") if project.get("name") == PROJECT else None
