from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from detection_pipeline.report.gallery import annotate, build_gallery
from detection_pipeline.report.run_data import Sample

GREEN = (60, 180, 75)  # the palette colour of label id 1
GRAY = (128, 128, 128)


def _close(pixel: tuple[int, ...], color: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=False))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "size"), [("PNG", (640, 480)), ("JPEG", (2000, 1500))])
def test_boxes_are_scaled_to_the_thumbnail(fmt, size):
    """A box over the top-left quarter's lower-right part lands at the same relative place in the thumbnail."""
    w, h = size
    box = [w * 0.1, h * 0.1, w * 0.5, h * 0.5]
    sample = Sample("x", w, h, [{"label_id": 1, "label": "person", "score": 0.9, "box": box}])
    thumb = Image.open(io.BytesIO(annotate(_encode(Image.new("RGB", size, GRAY), fmt), sample, max_side=320)))
    assert thumb.size == (320, 240)
    assert _close(thumb.getpixel((100, 119)), GREEN)  # bottom edge, at 0.5 * 240
    assert _close(thumb.getpixel((159, 80)), GREEN)  # right edge, at 0.5 * 320
    assert _close(thumb.getpixel((100, 80)), GRAY)  # inside the box
    assert _close(thumb.getpixel((250, 200)), GRAY)  # outside it


def test_exif_orientation_is_applied_before_drawing():
    """The engine's boxes are in EXIF-oriented pixels, so the thumbnail must be oriented the same way."""
    stored = Image.new("RGB", (80, 40), (0, 0, 255))
    stored.paste(
        (255, 0, 0), (0, 0, 40, 40)
    )  # left half red: after orientation 6 (90 deg clockwise) it is on top
    exif = Image.Exif()
    exif[0x0112] = 6
    sample = Sample("x", 40, 80, [])
    thumb = Image.open(io.BytesIO(annotate(_encode(stored, "JPEG", exif=exif), sample)))
    assert thumb.size == (40, 80)
    assert _close(thumb.getpixel((20, 20)), (255, 0, 0)) and _close(thumb.getpixel((20, 60)), (0, 0, 255))


def test_images_that_cannot_be_drawn_are_listed_not_fatal(tmp_path: Path):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), GRAY).save(good)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    samples = [Sample(str(p), 32, 32, []) for p in (good, junk, tmp_path / "gone.png")]
    gallery = build_gallery(samples)
    assert [t.image_uri for t in gallery.thumbnails] == [str(good)]
    assert gallery.thumbnails[0].data_uri.startswith("data:image/jpeg;base64,")
    reasons = dict(gallery.skipped)
    assert set(reasons) == {str(junk), str(tmp_path / "gone.png")}
    assert "UnidentifiedImageError" in reasons[str(junk)]
    assert reasons[str(tmp_path / "gone.png")].startswith("not_found")


@pytest.mark.timeout(60)
def test_samples_that_became_special_files_or_stalled_are_skipped_within_bounds(tmp_path, monkeypatch):
    from detection_pipeline.report import gallery
    from tests.hostile_servers import silent_server

    monkeypatch.setattr(gallery, "SOURCE_TIMEOUT_S", 1.0)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # no writer: an unbounded open would block the report task forever
    with silent_server() as url:
        samples = [Sample(uri, 32, 32, []) for uri in (str(fifo), "/dev/zero", f"{url}/a.png?token=SECRET")]
        gallery_ = build_gallery(samples)

    reasons = dict(gallery_.skipped)
    assert gallery_.thumbnails == []
    assert reasons[str(fifo)].startswith("not_a_regular_file") and reasons["/dev/zero"].startswith(
        "not_a_regular_file"
    )
    assert reasons[f"{url}/a.png?token=SECRET"].startswith("timeout")
