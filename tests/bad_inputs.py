"""The bad-input corpus: every kind of image and non-image a bucket really holds, each with its known outcome.

`write_corpus(directory)` writes the files and returns one `CorpusCase` per input, with the outcome the engine
must report for it: ("ok", (width, height)) or ("error", reason_code). Decode, fetch, engine and end-to-end
tests all run over the same cases, so a new case is checked everywhere at once. Images are tiny (<= 96 px)
so whole-pipeline tests over the corpus stay fast.

The unreadable case needs a file the test process may not read. As a normal user that is a chmod 000 file.
Root reads any file, so there it is a symlink to a write-only kernel attribute under /sys, which refuses
reads even to root with EACCES. Where neither works the case is left out (`has_case` says so).
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

OK = "ok"
ERROR = "error"

# Write-only sysfs attributes: open(..., "rb") fails with EACCES even for root.
_WRITE_ONLY_SYSFS = ("/sys/bus/cpu/uevent", "/sys/bus/platform/uevent", "/sys/bus/cpu/drivers_probe")


@dataclass(frozen=True)
class CorpusCase:
    name: str
    path: Path
    expected: tuple  # ("ok", (width, height)) or ("error", reason_code)
    kind: str = "file"  # file | missing | directory | unreadable: only "file" cases can be uploaded elsewhere

    @property
    def uri(self) -> str:
        return str(self.path)

    @property
    def ok(self) -> bool:
        return self.expected[0] == OK

    @property
    def size(self) -> tuple[int, int]:
        assert self.ok, self.name
        return self.expected[1]

    @property
    def error_code(self) -> str:
        assert not self.ok, self.name
        return self.expected[1]

    def data(self) -> bytes:
        assert self.kind == "file", f"{self.name} is a {self.kind}, it has no bytes"
        return self.path.read_bytes()


def write_corpus(directory: str | os.PathLike) -> list[CorpusCase]:
    """Write every case under `directory` (created if needed) and return the cases, in a stable order."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    cases = [_write_file(root, *case) for case in _file_cases()]
    cases.append(CorpusCase("missing", root / "missing.jpg", (ERROR, "not_found"), kind="missing"))
    cases.append(_directory_case(root))
    unreadable = _unreadable_case(root)
    if unreadable is not None:
        cases.append(unreadable)
    return cases


def file_case_names() -> list[str]:
    """Names of the cases that are files with bytes (for parametrising tests before the corpus is written)."""
    return [name for name, *_ in _file_cases()]


def has_case(cases: list[CorpusCase], name: str) -> bool:
    return any(case.name == name for case in cases)


def by_name(cases: list[CorpusCase]) -> dict[str, CorpusCase]:
    return {case.name: case for case in cases}


# -- the cases -----------------------------------------------------------------------------------


def _file_cases() -> list[tuple[str, str, bytes, tuple]]:
    """(case name, file name, bytes, expected outcome)."""
    return [
        ("jpeg", "rgb.jpg", _encode(_noise((64, 48)), "JPEG", quality=90), (OK, (64, 48))),
        ("grayscale", "grayscale.png", _encode(_gradient("L", (40, 30)), "PNG"), (OK, (40, 30))),
        ("palette_transparent", "palette_transparent.png", palette_with_transparency(), (OK, (32, 24))),
        ("rgba", "rgba.png", _encode(half_transparent_rgba(), "PNG"), (OK, (30, 20))),
        (
            "grey_alpha",
            "grey_alpha.png",
            _encode(Image.new("LA", (20, 20), (90, 128)), "PNG"),
            (OK, (20, 20)),
        ),
        (
            "cmyk_jpeg",
            "cmyk.jpg",
            _encode(Image.new("CMYK", (48, 32), (0, 255, 255, 0)), "JPEG", quality=95),
            (OK, (48, 32)),
        ),
        ("png_16bit", "grey16.png", _encode(sixteen_bit_grey(), "PNG"), (OK, (40, 20))),
        ("one_bit", "bitonal.png", _encode(_checkerboard((33, 17)), "PNG"), (OK, (33, 17))),
        ("one_pixel", "one_pixel.png", _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), (OK, (1, 1))),
        ("exif_rotated", "exif_rotated.jpg", exif_rotated_jpeg(), (OK, (32, 64))),
        ("animated_gif", "animated.gif", animated_gif(), (OK, (24, 24))),
        ("webp", "rgb.webp", _encode(_noise((40, 40)), "WEBP", quality=80), (OK, (40, 40))),
        ("bmp", "rgb.bmp", _encode(_noise((20, 10)), "BMP"), (OK, (20, 10))),
        ("tiff", "rgb.tiff", _encode(_noise((30, 30)), "TIFF"), (OK, (30, 30))),
        ("unicode_name", "space and ünïcødé 名前.jpg", _encode(_noise((16, 16)), "JPEG"), (OK, (16, 16))),
        ("truncated_jpeg", "truncated.jpg", truncated_jpeg(), (ERROR, "truncated")),
        ("zero_bytes", "zero_bytes.jpg", b"", (ERROR, "empty_file")),
        (
            "text_named_jpg",
            "text.jpg",
            b"This is a text file that someone named .jpg\n" * 4,
            (ERROR, "not_an_image"),
        ),
        ("random_bytes", "random_bytes.jpg", random.Random(7).randbytes(2048), (ERROR, "not_an_image")),
        ("png_header_only", "png_header_only.png", png_header_only(), (ERROR, "corrupt")),
        ("corrupt_png", "corrupt_pixels.png", png_with_damaged_pixels(), (ERROR, "corrupt")),
        ("heic", "heic_photo.heic", heic_header(), (ERROR, "unsupported")),
        ("decompression_bomb", "bomb.png", decompression_bomb_png(), (ERROR, "too_many_pixels")),
    ]


def _write_file(root: Path, name: str, file_name: str, data: bytes, expected: tuple) -> CorpusCase:
    path = root / file_name
    path.write_bytes(data)
    return CorpusCase(name, path, expected)


def _directory_case(root: Path) -> CorpusCase:
    path = root / "directory.jpg"
    path.mkdir(exist_ok=True)
    return CorpusCase("directory", path, (ERROR, "is_directory"), kind="directory")


def _unreadable_case(root: Path) -> CorpusCase | None:
    path = root / "unreadable.jpg"
    if path.is_symlink() or path.exists():
        path.unlink()
    if os.geteuid() != 0:
        path.write_bytes(_encode(_noise((8, 8)), "JPEG"))
        path.chmod(0)
        if _refuses_reads(path):
            return CorpusCase("unreadable", path, (ERROR, "permission_denied"), kind="unreadable")
        path.unlink()
    for target in _WRITE_ONLY_SYSFS:
        if _refuses_reads(Path(target)):
            path.symlink_to(target)
            return CorpusCase("unreadable", path, (ERROR, "permission_denied"), kind="unreadable")
    return None


def _refuses_reads(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.read(1)
    except PermissionError:
        return True
    except OSError:
        return False
    return False


# -- image builders (public: tests assert on the pixels they put in) ------------------------------------


def half_transparent_rgba() -> Image.Image:
    """Left half opaque red, right half fully transparent blue: decoded, the right half must be white."""
    image = Image.new("RGBA", (30, 20), (0, 0, 255, 0))
    image.paste((255, 0, 0, 255), (0, 0, 15, 20))
    return image


def palette_with_transparency() -> bytes:
    """Palette PNG: index 0 transparent (left half), index 1 green (right half)."""
    image = Image.new("P", (32, 24), 0)
    image.putpalette([0, 0, 0, 0, 160, 0] + [0, 0, 0] * 254)
    image.paste(1, (16, 0, 32, 24))
    return _encode(image, "PNG", transparency=0)


SIXTEEN_BIT_VALUES = (0, 257, 32768, 65535)  # rows of grey16.png; 8-bit: 0, 1, 128, 255


def sixteen_bit_grey() -> Image.Image:
    """40x20 16-bit grey, four bands of 5 rows with the values in SIXTEEN_BIT_VALUES."""
    rows = b"".join(struct.pack("<H", value) * 40 * 5 for value in SIXTEEN_BIT_VALUES)
    return Image.frombytes("I;16", (40, 20), rows)


def exif_rotated_jpeg() -> bytes:
    """Stored 64 wide x 32 high with a red left half, EXIF orientation 6 (rotate 90° clockwise to view):
    viewed it is 32 x 64 with red on top."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(image, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    """Three 24x24 frames: red, green, blue. Decoding keeps the first (red)."""
    frames = [Image.new("RGB", (24, 24), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    """A noisy 64x64 JPEG cut in the middle of its scan data, as an interrupted upload leaves it."""
    data = _encode(_noise((64, 64)), "JPEG", quality=90)
    return data[: len(data) * 3 // 5]


def png_header_only() -> bytes:
    """PNG signature and IHDR (40x30 RGB), then nothing."""
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 30, 8, 2, 0, 0, 0))


def png_with_damaged_pixels() -> bytes:
    """A well-formed 40x30 PNG (valid chunk CRCs) whose compressed pixel data is noise."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 30, 8, 2, 0, 0, 0))
    noise = b"\x78\x9c" + random.Random(11).randbytes(300)  # a zlib header, then garbage
    return _PNG_SIGNATURE + header + _png_chunk(b"IDAT", noise) + _png_chunk(b"IEND", b"")


BOMB_SIZE = (12_000, 10_000)  # 120 MP: over decode.DEFAULT_MAX_PIXELS, under Pillow's own error threshold


def decompression_bomb_png(size: tuple[int, int] = BOMB_SIZE) -> bytes:
    """A ~100-byte PNG declaring `size` RGB pixels, with one row of data. Decoding it would allocate
    width x height x 4 bytes before finding the data missing; it must be refused from the header."""
    width, height = size
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    one_row = zlib.compress(b"\x00" * (1 + 3 * width), 9)
    return _PNG_SIGNATURE + header + _png_chunk(b"IDAT", one_row) + _png_chunk(b"IEND", b"")


def heic_header() -> bytes:
    """The start of an iPhone HEIC file (an ISO-BMFF 'ftyp' box with brand heic)."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", 8 + len(ftyp) - 4) + ftyp + b"\x00" * 64


# -- helpers -------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise(size: tuple[int, int]) -> Image.Image:
    """Seeded RGB noise: deterministic bytes, and compressed data that fills the file (so a cut lands in pixels)."""
    width, height = size
    return Image.frombytes("RGB", size, random.Random(width * 1000 + height).randbytes(width * height * 3))


def _gradient(mode: str, size: tuple[int, int]) -> Image.Image:
    width, height = size
    return Image.frombytes(
        mode, size, bytes((x * 255 // max(width - 1, 1)) for _ in range(height) for x in range(width))
    )


def _checkerboard(size: tuple[int, int]) -> Image.Image:
    width, height = size
    return Image.frombytes(
        "L", size, bytes(255 * ((x + y) % 2) for y in range(height) for x in range(width))
    ).convert("1")
