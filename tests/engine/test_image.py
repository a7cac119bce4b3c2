"""The engine's container image definition: pins that match the tested environment, and the entrypoint."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import torch
from packaging.version import Version
from torchvision.models import get_model_weights

from detection_engine import prefetch_weights

IMAGE = Path(__file__).resolve().parents[2] / "inference_image"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (IMAGE / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, pinned = line.split("==")
            pins[name] = pinned
    return pins


def test_requirements_pin_the_versions_the_tests_run_with():
    pins = _pins()
    assert {"torch", "torchvision", "pillow", "numpy", "pyarrow", "fsspec", "gcsfs", "psutil"} <= set(pins)
    for name, pinned in pins.items():
        installed = Version(version(name))
        assert installed.public == Version(pinned).public, f"{name}: pinned {pinned}, installed {installed}"


def test_dockerfile_runs_the_engine_as_a_non_root_user():
    dockerfile = (IMAGE / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "detection_engine"]' in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "COPY requirements.txt" in dockerfile and "-r /tmp/requirements.txt" in dockerfile
    assert "python -m detection_engine.prefetch_weights" in dockerfile and "ARG BAKE_WEIGHTS" in dockerfile


def test_prefetch_weights_refuses_a_name_that_is_not_in_the_enum(capsys):
    assert prefetch_weights.main(["fasterrcnn_resnet50_fpn", "COCO_V9"]) == 2
    assert "'COCO_V9' is not one of COCO_V1, DEFAULT" in capsys.readouterr().err


def test_prefetch_weights_leaves_the_file_where_the_engine_looks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    member = get_model_weights("fasterrcnn_mobilenet_v3_large_320_fpn").DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / Path(member.url).name
    cached.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, cached)  # as if downloaded earlier: no network needed

    assert prefetch_weights.main(["fasterrcnn_mobilenet_v3_large_320_fpn", "DEFAULT"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"-> {cached}")
