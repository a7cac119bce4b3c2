"""Annotated thumbnails of sample images for the run report, drawn with Pillow.

torchvision.utils.draw_bounding_boxes is the torch way to draw detections, but the report runs in the Airflow
worker, which must not need torch; Pillow's ImageDraw draws the same boxes with no heavy dependency.
Boxes are drawn on the downscaled thumbnail (scaled to it) so lines and labels stay crisp at any image size.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from detection_engine.storage import ReadLimits, ReadRefused, read_bytes
from detection_pipeline.report.run_data import Sample

MAX_SIDE = 320
MAX_SOURCE_BYTES = 64 * 1024 * 1024  # a sample is for looking at; never pull a huge object into the worker
SOURCE_TIMEOUT_S = 30.0  # per sample; eight are fetched at a time
_PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
    "#42d4f4", "#f032e6", "#9a6324", "#800000", "#000075",
)  # fmt: skip
_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Thumbnail:
    image_uri: str
    data_uri: str  # data:image/jpeg;base64,...
    detections: list[dict]


@dataclass(frozen=True)
class Gallery:
    thumbnails: list[Thumbnail]
    skipped: list[tuple[str, str]]  # (image URI, why it could not be drawn)


def build_gallery(samples: list[Sample], *, max_side: int = MAX_SIDE) -> Gallery:
    """Fetch and annotate each sample; one that cannot be fetched or decoded is listed, never fatal."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda s: _try_thumbnail(s, max_side), samples))
    thumbnails = [o for o in outcomes if isinstance(o, Thumbnail)]
    skipped = [o for o in outcomes if isinstance(o, tuple)]
    return Gallery(thumbnails, skipped)


def _try_thumbnail(sample: Sample, max_side: int) -> Thumbnail | tuple[str, str]:
    try:
        jpeg = annotate(fetch_bytes(sample.image_uri), sample, max_side=max_side)
    except ReadRefused as exc:
        return sample.image_uri, exc.reason
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return sample.image_uri, f"{type(exc).__name__}: {exc}"
    data_uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return Thumbnail(sample.image_uri, data_uri, sample.detections)


def fetch_bytes(uri: str, limit: int = MAX_SOURCE_BYTES) -> bytes:
    """The sample's bytes, read bounded (regular files only, `limit`, SOURCE_TIMEOUT_S): an input that became
    a FIFO or sits behind a stalled server since the engine read it costs seconds, never the report task."""
    return read_bytes(uri, ReadLimits(max_bytes=limit, timeout_s=SOURCE_TIMEOUT_S))


def annotate(image_bytes: bytes, sample: Sample, *, max_side: int = MAX_SIDE) -> bytes:
    """A JPEG thumbnail (longest side <= max_side) with the sample's boxes and labels drawn on it."""
    image = Image.open(io.BytesIO(image_bytes))
    width, height = image.size
    if image.getexif().get(_ORIENTATION) in _ROTATED:
        width, height = height, width
    # Boxes are in pixels of the decoded, EXIF-oriented image the engine saw.
    width, height = sample.width or width, sample.height or height
    image.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced scale, much faster for big photos
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((max_side, max_side))
    sx, sy = image.width / width, image.height / height

    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    for det in sample.detections:
        x1, y1, x2, y2 = det["box"]
        box = (x1 * sx, y1 * sy, max(x1 * sx, x2 * sx), max(y1 * sy, y2 * sy))
        color = _PALETTE[int(det["label_id"]) % len(_PALETTE)]
        draw.rectangle(box, outline=color, width=2)
        text = f"{label_name(det)} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx, ty = box[0], max(0.0, box[1] - (bottom - top) - 3)
        draw.rectangle((tx, ty, tx + right - left + 4, ty + bottom - top + 3), fill=color)
        draw.text((tx + 2, ty + 1 - top), text, fill="white", font=font)

    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def label_name(det: dict) -> str:
    return det.get("label") or f"id {det['label_id']}"
