"""Generate the demo's sample images: simple synthetic street-like scenes drawn with Pillow.

They are made here, so they are free to redistribute and need no network. Besides ordinary images the set holds
a byte-identical copy under another name (found by `dedup_mode=content`) and a corrupt file (an `error` row), so
the demo shows what the pipeline does with both.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZES = [(640, 480), (480, 640), (800, 600), (512, 512), (1024, 576)]


def _scene(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    horizon = int(height * rng.uniform(0.45, 0.65))
    sky = tuple(rng.randint(120, 200) for _ in range(3))
    for y in range(horizon):  # a vertical gradient for the sky
        shade = tuple(min(255, c + y * 60 // max(horizon, 1)) for c in sky)
        draw.line([(0, y), (width, y)], fill=shade)
    draw.rectangle([0, horizon, width, height], fill=(70, 70, 75))
    for _ in range(rng.randint(2, 6)):  # buildings
        x = rng.randint(0, width - 60)
        w, h = rng.randint(40, 160), rng.randint(60, horizon)
        draw.rectangle([x, horizon - h, x + w, horizon], fill=tuple(rng.randint(60, 180) for _ in range(3)))
    for _ in range(rng.randint(1, 4)):  # car-like boxes with wheels
        x = rng.randint(0, width - 120)
        y = rng.randint(horizon + 10, height - 50)
        body = tuple(rng.randint(0, 255) for _ in range(3))
        draw.rounded_rectangle([x, y, x + 110, y + 40], radius=8, fill=body)
        draw.ellipse([x + 10, y + 30, x + 30, y + 50], fill=(20, 20, 20))
        draw.ellipse([x + 80, y + 30, x + 100, y + 50], fill=(20, 20, 20))
    for _ in range(rng.randint(0, 3)):  # people-like figures
        x = rng.randint(10, width - 30)
        y = rng.randint(horizon - 20, height - 90)
        draw.ellipse([x + 5, y, x + 21, y + 16], fill=(230, 190, 160))
        draw.rectangle([x, y + 16, x + 26, y + 70], fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return image


def generate(directory: Path, count: int = 24, seed: int = 7) -> list[Path]:
    """Write `count` scenes plus one duplicate and one corrupt file; return every path written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = directory / f"scene-{i:03d}.jpg"
        _scene(rng, SIZES[i % len(SIZES)]).save(path, quality=90)
        paths.append(path)
    duplicate = directory / "scene-000-copy.jpg"
    duplicate.write_bytes(paths[0].read_bytes())
    corrupt = directory / "corrupt.jpg"
    corrupt.write_bytes(paths[1].read_bytes()[:600])  # a truncated JPEG
    return [*paths, duplicate, corrupt]
