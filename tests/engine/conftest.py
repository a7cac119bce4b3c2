"""Small shared fixtures for engine tests: tiny generated images and tiny, seeded, random-weight models.

Pretrained weights cannot be downloaded here, and full-size detectors take seconds per image on a CPU, so
every engine test runs random-init models (seeded) on images of 64-160 px with min_size/max_size 128/160.
Helpers are handed out as session fixtures (factories), so test modules never import this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detection_engine.models import ModelOptions
from tests.processes import Measured, run_measured

REPO = Path(__file__).resolve().parents[2]
# Random-init detectors score close to 1/num_classes; 0.01 keeps boxes for every family while sparing NMS
# the tens of thousands of near-zero candidates a 0 threshold would hand it.
TINY_THRESHOLD = 0.01
TINY_MIN_SIZE, TINY_MAX_SIZE = 128, 160
CHEAP_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"

# (width, height): landscape, portrait and square, with repeats of each aspect ratio for grouping.
MIXED_SIZES = [(96, 64), (64, 96), (120, 80), (128, 128), (80, 120), (150, 100), (100, 100), (64, 96)]


def exact_detections(result) -> tuple | None:
    """An ImageResult's detections as bytes, for comparing two runs bit for bit (None: no detections)."""
    d = result.detections
    return None if d is None else (d.boxes.tobytes(), d.scores.tobytes(), d.labels.tolist())


def _tiny_options(name: str = CHEAP_MODEL, **overrides) -> ModelOptions:
    values = {
        "name": name,
        "weights": "none",
        "score_threshold": TINY_THRESHOLD,
        "max_detections": 20,
        "min_size": TINY_MIN_SIZE,
        "max_size": TINY_MAX_SIZE,
        "device": "cpu",
        "seed": 0,
    }
    values.update(overrides)
    return ModelOptions(**values)


def _write_images(directory: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    """PNG images (lossless, so any decoder sees the same pixels) of smooth random blobs, one per size."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height) in enumerate(sizes):
        coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        path = directory / f"image-{i:03d}-{width}x{height}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def _write_manifest(path: Path, uris: list[str]) -> str:
    path.write_text("\n".join(uris) + "\n")
    return str(path)


def _engine_env() -> dict[str, str]:
    """Environment for `python -m detection_engine` subprocesses: the package importable without installing."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "inference_image"), env.get("PYTHONPATH")]))
    return env


def _run_engine(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Measured:
    """`python -m detection_engine ARGS` as a real subprocess, as both launchers run it, with its peak RSS."""
    return run_measured(
        [sys.executable, "-m", "detection_engine", *args],
        env={**_engine_env(), **(env or {})},
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_options():
    """tiny_options(name=CHEAP_MODEL, **overrides) -> ModelOptions for a seeded random-init tiny model."""
    return _tiny_options


@pytest.fixture(scope="session")
def write_images():
    """write_images(directory, [(width, height), ...], seed=0) -> PNG paths."""
    return _write_images


@pytest.fixture(scope="session")
def write_manifest():
    """write_manifest(path, uris) -> path of a text shard manifest."""
    return _write_manifest


@pytest.fixture(scope="session")
def run_engine():
    """run_engine(*args, env=None) -> the engine CLI's finished subprocess (a CompletedProcess with peak_rss_mib)."""
    return _run_engine


@pytest.fixture
def mixed_images(tmp_path: Path) -> list[str]:
    """Eight PNGs of mixed aspect ratios (landscape, portrait, square), 64-150 px."""
    return _write_images(tmp_path / "images", MIXED_SIZES)
