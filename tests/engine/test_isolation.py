"""Failure isolation in the shard's data path: one bad image or one stuck read is one error row, never the shard.

Real tiny model (MobileNet 320, seeded random weights), real files, real sockets; every test under a timeout.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detection_engine.inference import Detector, resized_shape
from detection_engine.models import load_model
from detection_engine.pipeline import PipelineOptions, run_pipeline
from detection_engine.storage import ReadLimits
from tests.hostile_servers import endless_http_server, silent_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model(tiny_options):
    return load_model(tiny_options(min_size=None, max_size=None))  # the model's own sizes: 320 / 640


def _detector(loaded) -> Detector:
    return Detector(loaded.model, loaded.device, loaded.precision, score_threshold=0.01, max_detections=20)


def _codes(outcome) -> list[str | None]:
    return [r.error.split(":")[0] if r.error else None for r in outcome.results]


def test_a_strip_that_resizes_to_zero_px_is_one_too_thin_row(model, tmp_path, write_images):
    paths = write_images(tmp_path, [(64, 64), (700, 1), (64, 96)])
    outcome = run_pipeline(paths, _detector(model), PipelineOptions(batch_size=3, decode_workers=1))
    assert _codes(outcome) == [None, "too_thin", None]
    assert (outcome.results[1].width, outcome.results[1].height) == (700, 1)


@settings(max_examples=40, deadline=None)
@given(long=st.integers(1, 20_000), short=st.integers(1, 20), transpose=st.booleans())
def test_the_precheck_matches_torchvisions_own_resize(model, long, short, transpose):
    """Thin shapes are where a side can round to 0 px; one side up to 20,000 px keeps the tensor small."""
    height, width = (short, long) if transpose else (long, short)
    expected = resized_shape(model.model.transform, height, width)
    try:
        resized, _ = model.model.transform.resize(torch.zeros((3, height, width)), None)
        actual = tuple(resized.shape[-2:])
    except RuntimeError:
        actual = None
    assert (actual is None) == (min(expected) < 1)
    if actual is not None:
        assert actual == expected


def test_any_exception_from_the_model_is_bisected_to_the_image_that_causes_it(model, tmp_path, write_images):
    paths = write_images(tmp_path, [(64, 64), (97, 61), (64, 96), (80, 80)])
    inner = model.model

    def picky(inputs):  # raises for any batch holding the 97 px wide image, like a model bug would
        if any(t.shape[-1] == 97 for t in inputs):
            raise RuntimeError("shape mismatch in some layer")
        return inner(inputs)

    detector = Detector(picky, model.device, model.precision, score_threshold=0.01, max_detections=20)
    outcome = run_pipeline(paths, detector, PipelineOptions(batch_size=4, decode_workers=1, group_window=1))
    assert _codes(outcome) == [None, "model_error", None, None]
    assert "shape mismatch" in outcome.results[1].error


def test_a_systemic_device_fault_fails_the_shard(model, tmp_path, write_images):
    paths = write_images(tmp_path, [(64, 64)])

    def broken(inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    detector = Detector(broken, model.device, model.precision)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_pipeline(paths, detector, PipelineOptions(batch_size=1, decode_workers=1))


def test_special_files_and_hostile_servers_are_one_error_row_each(model, tmp_path, write_images):
    good = write_images(tmp_path, [(64, 64)])[0]
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jpg"
    os.symlink(tmp_path / "loop2.jpg", loop)
    os.symlink(loop, tmp_path / "loop2.jpg")
    limits = ReadLimits(max_bytes=2 << 20, connect_timeout_s=1, read_timeout_s=1, timeout_s=3)
    with silent_server() as silent, endless_http_server() as endless:
        uris = [good, str(fifo), "/dev/zero", str(loop), f"{silent}/a.jpg", f"{endless}/b.jpg", good + "x"]
        outcome = run_pipeline(
            uris, _detector(model), PipelineOptions(batch_size=2, decode_workers=1, read_limits=limits)
        )
    assert _codes(outcome) == [
        None,
        "not_a_regular_file",
        "not_a_regular_file",
        "not_a_regular_file",
        "timeout",
        "too_large",
        "not_found",
    ]


_NAME_CHARS = st.characters(codec="utf-8", exclude_characters="/\x00")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.tuples(st.integers(1, 2000), st.integers(1, 60)), min_size=1, max_size=4),
    transpose=st.booleans(),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "I;16", "CMYK", "1"]),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
    damage=st.sampled_from(["none", "truncate", "flip"]),
    name=st.text(_NAME_CHARS, min_size=1, max_size=20),
    raw=st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b and b"\x00" not in b),
)
def test_any_generated_input_is_exactly_one_row(
    model, tmp_path_factory, sizes, transpose, mode, fmt, damage, name, raw
):
    directory = tmp_path_factory.mktemp("gen")
    uris = []
    for i, (long, short) in enumerate(sizes):
        width, height = (short, long) if transpose else (long, short)
        image = Image.new("RGB", (width, height), (i * 40 % 256, 90, 200)).convert(mode)
        path = os.path.join(os.fsencode(directory), f"{i}-{name}".encode(errors="surrogateescape") + raw)
        try:
            with open(path, "wb") as fh:
                image.save(fh, format=fmt)
        except (OSError, ValueError, KeyError):  # this format cannot hold this mode: write it as PNG
            with open(path, "wb") as fh:
                image.convert("RGB").save(fh, format="PNG")
        data = open(path, "rb").read()
        if damage == "truncate":
            data = data[: max(1, len(data) // 2)]
        elif damage == "flip":
            data = bytes(b ^ 0xFF if j % 7 == 3 else b for j, b in enumerate(data))
        with open(path, "wb") as fh:
            fh.write(data)
        uris.append(os.fsdecode(path))
    outcome = run_pipeline(uris, _detector(model), PipelineOptions(batch_size=2, decode_workers=1))
    assert [r.uri for r in outcome.results] == uris
    assert all(r.error is None or ": " in r.error for r in outcome.results)
