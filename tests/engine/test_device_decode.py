"""`--decode-on-device`: which JPEGs the device decodes, and that the switch never changes an image's outcome.

On a CPU the "device" decoder is torchvision's libjpeg-turbo, pixel for pixel Pillow's, so every property here
is exact: whatever the bytes, an image gives the same pixels or the same error code with the switch as without.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detection_engine import cli, device_decode, layout
from detection_engine.decode import ImageError, decode_image, decode_or_error
from detection_engine.device_decode import EncodedJpeg, decode_batch, device_decodable
from detection_engine.inference import Detector
from detection_engine.models import load_model
from detection_engine.preprocess import host_tensor, model_input, model_inputs

CPU = torch.device("cpu")
LIMIT = 10**8
ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG"


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def _jpeg(
    width=48,
    height=32,
    seed=0,
    mode="RGB",
    progressive=False,
    subsampling=2,
    quality=85,
    orientation=None,
    xmp_orientation=None,
    xmp_form="attribute",
    adobe_transform=None,
) -> bytes:
    image = Image.fromarray(_pixels(width, height, seed)).convert(mode)
    kwargs = {"quality": quality, "progressive": progressive}
    if mode != "L":
        kwargs["subsampling"] = subsampling
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kwargs["exif"] = exif.tobytes()
    if xmp_orientation is not None:
        kwargs["xmp"] = _xmp(xmp_orientation, xmp_form)
    out = io.BytesIO()
    image.save(out, "JPEG", **kwargs)
    data = out.getvalue()
    if (
        adobe_transform is not None
    ):  # an Adobe APP14 segment right after SOI: version, flags, colour transform
        adobe = b"Adobe" + b"\x00\x64" + b"\x00\x00" * 2 + bytes([adobe_transform])
        data = data[:2] + b"\xff\xee" + (len(adobe) + 2).to_bytes(2, "big") + adobe + data[2:]
    return data


def _xmp(orientation: int, form: str) -> bytes:
    tiff = 'xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
    if form == "attribute":
        description = f'<rdf:Description {tiff} tiff:Orientation="{orientation}"/>'
    else:
        description = (
            f"<rdf:Description {tiff}><tiff:Orientation>{orientation}</tiff:Orientation></rdf:Description>"
        )
    rdf = 'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
    return f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF {rdf}>{description}</rdf:RDF></x:xmpmeta>'.encode()


def _rgb_coded(data: bytes) -> bytes:
    """The file with its three components renamed R, G, B (their ids in the SOF0 segment)."""
    sof = data.index(b"\xff\xc0")
    ids = sof + 4 + 6  # marker, length, then precision, height, width, count; then (id, sampling, table) x 3
    named = bytearray(data)
    named[ids], named[ids + 3], named[ids + 6] = b"RGB"
    return bytes(named)


@st.composite
def jpeg_files(draw) -> bytes:
    """JPEGs as cameras, editors and broken uploads make them: any size, colour mode, coding, orientation,
    then cut short, with a byte changed, or with bytes after the end."""
    data = _jpeg(
        width=draw(st.integers(1, 80)),
        height=draw(st.integers(1, 80)),
        seed=draw(st.integers(0, 2**16)),
        mode=draw(st.sampled_from(["RGB", "RGB", "L", "CMYK"])),
        progressive=draw(st.booleans()),
        subsampling=draw(st.sampled_from([0, 1, 2])),
        quality=draw(st.integers(5, 100)),
        orientation=draw(st.sampled_from([None, 1, 1, *range(2, 9)])),
        xmp_orientation=draw(st.sampled_from([None, None, 1, *range(2, 9)])),
        xmp_form=draw(st.sampled_from(["attribute", "element"])),
        adobe_transform=draw(st.sampled_from([None, None, 0, 1, 2])),
    )
    damage = draw(st.sampled_from(["none", "none", "cut", "byte", "trailing"]))
    if damage == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    if damage == "byte":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if damage == "trailing":
        return data + draw(st.binary(min_size=1, max_size=16))
    return data


def _cpu_outcome(data: bytes, limit: int):
    """What the decode threads make of the bytes without the switch."""
    pixels = decode_or_error(data, limit)
    return ("error", pixels.code) if isinstance(pixels, ImageError) else ("pixels", pixels)


def _switched_outcome(data: bytes, limit: int):
    """What the engine does with the switch on: the header check, then the device decode or the CPU path."""
    encoded = device_decodable(data, limit)
    if encoded is None:
        return _cpu_outcome(data, limit)
    (image,) = decode_batch([encoded], CPU).images
    if isinstance(image, ImageError):
        return ("error", image.code)
    return ("pixels", image.permute(1, 2, 0).numpy())


def _same(a, b) -> bool:
    return a[0] == b[0] and (np.array_equal(a[1], b[1]) if a[0] == "pixels" else a[1] == b[1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(jpeg_files(), st.binary(max_size=300)), limit=st.sampled_from([LIMIT, 2000, 1]))
def test_the_switch_never_changes_what_an_image_gives(data, limit):
    assert _same(_switched_outcome(data, limit), _cpu_outcome(data, limit))


@settings(max_examples=60, deadline=None)
@given(files=st.lists(jpeg_files(), min_size=1, max_size=5))
def test_one_bad_jpeg_in_a_batch_costs_only_itself(files):
    eligible = [(data, e) for data in files if (e := device_decodable(data, LIMIT)) is not None]
    decoded = decode_batch([e for _, e in eligible], CPU)
    assert len(decoded.images) == len(eligible)
    for (data, _), image in zip(eligible, decoded.images, strict=True):
        alone = ("error", image.code) if isinstance(image, ImageError) else ("pixels", image.permute(1, 2, 0))
        assert _same((alone[0], np.asarray(alone[1])), _cpu_outcome(data, LIMIT))


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 120),
    height=st.integers(1, 120),
    subsampling=st.sampled_from([0, 1, 2]),
    quality=st.integers(5, 100),
    orientation=st.sampled_from([None, 1]),
)
def test_camera_jpegs_are_decoded_on_the_device(width, height, subsampling, quality, orientation):
    data = _jpeg(width, height, subsampling=subsampling, quality=quality, orientation=orientation)
    encoded = device_decodable(data, LIMIT)
    assert encoded is not None and (encoded.height, encoded.width) == (height, width)
    assert decode_batch([encoded], CPU).on_device == 1


@pytest.mark.parametrize(
    "data",
    [
        _jpeg(progressive=True),  # progressive: the CPU path
        _jpeg(mode="L"),  # one component
        _jpeg(mode="CMYK"),  # four components (Adobe)
        _jpeg(adobe_transform=0),  # three components, RGB-coded (Adobe)
        _jpeg(orientation=6),  # rotated by EXIF: the CPU path applies it
        _jpeg(xmp_orientation=8),  # rotated by XMP: Pillow reads that too
        _jpeg(xmp_orientation=3, xmp_form="element"),
        _jpeg()[:-1],  # no EOI: maybe truncated, Pillow decides
        _jpeg()[:2] + b"\xff\xe2\x00\x06MPF\x00" + _jpeg()[2:],  # multi-picture (phones' MPO)
        _jpeg().replace(b"\xff\xc0", b"\xff\xc9", 1),  # arithmetic coding
        _rgb_coded(_jpeg()),  # components named R, G, B: libjpeg reads them as RGB, not YCbCr
    ],
    ids=[
        "progressive",
        "grey",
        "cmyk",
        "adobe-rgb",
        "rotated",
        "xmp-rotated",
        "xmp-element",
        "no-eoi",
        "mpo",
        "arithmetic",
        "rgb-coded",
    ],
)
def test_jpegs_the_device_decoder_may_read_differently_stay_on_the_cpu(data):
    assert device_decodable(data, LIMIT) is None


def test_a_jpeg_over_the_pixel_limit_stays_on_the_cpu_and_is_refused_there():
    data = _jpeg(40, 30)
    assert device_decodable(data, 40 * 30) is not None
    assert device_decodable(data, 40 * 30 - 1) is None
    assert _cpu_outcome(data, 40 * 30 - 1) == ("error", "too_many_pixels")


def test_model_inputs_are_the_cpu_paths_bit_for_bit():
    files = [_jpeg(40, 30, seed=1), _jpeg(31, 17, seed=2, subsampling=0)]
    host = [host_tensor(decode_image(data), pin=False) for data in files]
    mixed = [device_decodable(files[0], LIMIT), host[1]]
    prepared = model_inputs(mixed, CPU)
    assert prepared.decoded_on_device == 1
    for got, want in zip(prepared.images, host, strict=True):
        assert torch.equal(got, model_input(want, CPU))


def test_a_device_decoder_that_raises_falls_back_to_the_cpu(monkeypatch):
    """nvJPEG refusing a file Pillow reads (or failing outright) costs speed, never an image."""
    files = [_jpeg(40, 30, seed=s) for s in range(3)]

    def refuses(data, device):
        raise RuntimeError("nvjpegDecodeBatched failed: NVJPEG_STATUS_BITSTREAM_ERROR")

    monkeypatch.setattr(device_decode, "_decode", refuses)
    decoded = decode_batch([device_decodable(f, LIMIT) for f in files], CPU)
    assert decoded.on_device == 0
    for data, image in zip(files, decoded.images, strict=True):
        assert np.array_equal(image.permute(1, 2, 0).numpy(), decode_image(data))


def test_out_of_memory_while_decoding_reaches_the_detector(monkeypatch, tiny_options):
    """The Detector halves a batch on OOM; a decode OOM must reach it, not become a CPU fallback."""
    calls = []

    def decode(data, device):
        calls.append(len(data))
        if len(data) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [torch.zeros((3, 30, 40), dtype=torch.uint8)]

    monkeypatch.setattr(device_decode, "_decode", decode)
    detector = Detector(load_model(tiny_options()).model, CPU, score_threshold=0.01)
    images = [device_decodable(_jpeg(40, 30, seed=s), LIMIT) for s in range(2)]
    outputs = detector(images)
    assert len(outputs) == 2 and detector.oom_splits == 1 and calls == [2, 1, 1]
    assert detector.decoded_on_device == 2


def test_encoded_jpegs_carry_their_header_size():
    encoded = device_decodable(_jpeg(64, 20), LIMIT)
    assert isinstance(encoded, EncodedJpeg) and encoded.shape == (20, 64, 3)


# -- a shard, through the command line --------------------------------------------------------------


def _shard_inputs(directory: Path) -> tuple[list[str], int]:
    """A shard's worth of files: baseline JPEGs (the device's), others for the CPU, broken ones; and how
    many the device should decode."""
    directory.mkdir(parents=True)
    device = [_jpeg(w, h, seed=i) for i, (w, h) in enumerate([(96, 64), (64, 96), (128, 128), (150, 100)])]
    cpu = [
        _jpeg(96, 64, seed=9, progressive=True),
        _jpeg(80, 60, seed=10, orientation=8),
        _jpeg(64, 64, seed=11, mode="L"),
        _jpeg(96, 64, seed=12)[:-300],  # truncated: an error row either way
        _jpeg(2000, 1, seed=13),  # too thin for the model: refused from the header's size
        b"not an image at all",
    ]
    png = io.BytesIO()
    Image.fromarray(_pixels(70, 50, 14)).save(png, "PNG")
    paths = []
    for i, data in enumerate([*device, *cpu, png.getvalue()]):
        suffix = "png" if data.startswith(PNG_SIGNATURE) else "jpg"
        path = directory / f"image-{i:02d}.{suffix}"
        path.write_bytes(data)
        paths.append(str(path))
    return paths, len(device)


def _run(tmp_path: Path, manifest: str, name: str, *extra: str) -> tuple[pd.DataFrame, dict]:
    prefix = str(tmp_path / name)
    args = [
        f"--manifest={manifest}", f"--output-prefix={prefix}", "--run-id=r", "--run-date=2026-12-08",
        "--shard-index=0", "--model=fasterrcnn_mobilenet_v3_large_320_fpn", "--weights=none",
        "--min-size=128", "--max-size=160", "--score-threshold=0.01", "--batch-size=2",
        f"--summary-path={tmp_path / name / 'summary.json'}", *extra,
    ]  # fmt: skip
    assert cli.main(args) == cli.EXIT_OK
    results = pd.read_parquet(layout.shard_results_uri(prefix, 0)).sort_values("image_uri")
    metrics = json.loads(Path(layout.shard_metrics_uri(prefix, 0)).read_text())
    return results.reset_index(drop=True), metrics


def _outcomes(results: pd.DataFrame) -> list:
    def size(value):
        return None if pd.isna(value) else int(value)

    return [
        (
            r.image_uri,
            r.status,
            r.error,
            size(r.width),
            size(r.height),
            json.dumps(list(r.detections), default=str),
        )
        for r in results.itertuples()
    ]


@pytest.mark.timeout(600)
def test_a_shard_gives_the_same_rows_with_the_switch_on_one_device_and_on_two_and_prefetched(
    tmp_path, write_manifest
):
    paths, on_device = _shard_inputs(tmp_path / "images")
    manifest = write_manifest(tmp_path / "shard.txt", paths)
    plain, plain_metrics = _run(tmp_path, manifest, "plain")
    switched, metrics = _run(tmp_path, manifest, "switched", "--decode-on-device")
    paired, paired_metrics = _run(tmp_path, manifest, "paired", "--decode-on-device", "--devices=cpu,cpu")
    staged, staged_metrics = _run(tmp_path, manifest, "staged", "--decode-on-device", "--prefetch-to-device")

    assert _outcomes(switched) == _outcomes(plain) == _outcomes(paired) == _outcomes(staged)
    assert json.loads(staged_metrics["fast_paths"])["prefetch_to_device"] is True
    assert [d["decoded_on_device"] for d in json.loads(staged_metrics["devices"])] == [on_device]
    assert (plain.status == "ok").sum() == on_device + 4  # and the progressive, rotated, grey, PNG ones
    assert json.loads(plain_metrics["fast_paths"])["decode_on_device"] is False
    assert json.loads(metrics["fast_paths"])["decode_on_device"] is True
    assert [d["decoded_on_device"] for d in json.loads(plain_metrics["devices"])] == [0]
    assert [d["decoded_on_device"] for d in json.loads(metrics["devices"])] == [on_device]
    assert sum(d["decoded_on_device"] for d in json.loads(paired_metrics["devices"])) == on_device


def test_every_gpu_replica_decodes_on_the_first_gpu_that_did(monkeypatch):
    """torchvision has one nvJPEG decoder per process; switching GPUs would re-create it on every batch."""
    monkeypatch.setattr(device_decode, "_decoder_gpu", [])
    assert device_decode.decoder_device(CPU) == CPU
    assert device_decode.decoder_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert device_decode.decoder_device(torch.device("cuda", 0)) == torch.device("cuda", 1)
    assert device_decode.decoder_device(torch.device("cuda", 3)) == torch.device("cuda", 1)
    assert device_decode.decoder_device(CPU) == CPU
