"""Turn the bytes of one image into an RGB array, or say in one short line why not.

Every failure is an `ImageError` whose `reason` is "<code>: <detail>". The code is one of a fixed set, so
results and metrics can count failures by kind; the detail is for a human and never carries credentials.

    not_found          the URI names no file or object                          (fetch)
    permission_denied  the file or object exists but may not be read            (fetch)
    is_directory       the URI names a directory or prefix, not a file          (fetch)
    empty_file         zero bytes                                               (fetch, decode)
    fetch_error        any other failure to read the bytes (network, server)    (fetch)
    not_a_regular_file a FIFO, device, socket or symlink loop, never opened      (fetch)
    too_large          more bytes than --max-image-bytes, cut off while streaming (fetch)
    timeout            not fetched and decoded within --image-timeout-s         (fetch, pipeline)
    not_an_image       the bytes are no image format at all (text, random data)
    truncated          a supported image whose data ends early
    corrupt            a supported image whose data is damaged
    too_many_pixels    width x height over the limit (decompression bombs), checked before any pixel is decoded
    unsupported        an image format or pixel mode this engine does not decode (HEIC, AVIF, PSD, float TIFF...)
    too_thin           the model's resize would leave a side of 0 px, refused before the batch     (inference)
    model_error        the model raised on this image alone (found by bisecting the batch)          (inference)
    out_of_memory      the image does not fit on the device even alone                               (inference)

Decoding choices, made once here so every model sees the same pixels:

- Formats: JPEG (and its MPO variant), PNG, WebP, GIF, BMP, TIFF. Others are refused by the format allowlist
  before any plugin parses them, which also keeps Pillow's riskier plugins (EPS runs Ghostscript) out of reach.
- Animated GIF/WebP and multi-page TIFF: the first frame.
- EXIF orientation is applied, so width and height are as a person sees the image. A broken EXIF block is
  ignored (the pixels are still good), as browsers do.
- Transparency (RGBA, LA, PA, palette or grey with a transparent colour) is composited onto white: the colour
  under fully transparent pixels is arbitrary (often black), and white is how documents and pages show them.
- 16-bit grey (Pillow's I;16 modes, and 32-bit I holding 16-bit data) is scaled to 8 bits by v * 255 / 65535;
  Pillow's own convert would clip everything above 255 to white. 16-bit RGB PNGs are reduced by Pillow itself.
- CMYK, YCbCr, greyscale and 1-bit images are converted with Pillow's `convert("RGB")`.
- Truncated data is an error, never silently padded with grey: this module relies on Pillow's default
  `ImageFile.LOAD_TRUNCATED_IMAGES = False` and never changes it, nor any other Pillow global.
- The pixel limit is checked on the size read from the header, before decoding. Pillow's own bomb check
  (`Image.MAX_IMAGE_PIXELS`, an error at twice that value) still applies first, and is reported as
  too_many_pixels too; a process that wants a `max_pixels` above ~179 MP must raise Pillow's limit as well.

Thread-safe: each call works on its own `Image`; Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detection_engine.bounded_read import FETCH_CODES
from detection_engine.redaction import redact_line

REASON_CODES = (
    *FETCH_CODES,
    "not_an_image",
    "truncated",
    "corrupt",
    "too_many_pixels",
    "unsupported",
    "too_thin",
    "model_error",
    "out_of_memory",
)

# Pillow's own warning threshold (~89.5 MP, 256 MiB as RGBX): bigger than any camera a detector is fed, and
# every image Pillow would warn about as a possible bomb is refused rather than decoded with a warning.
DEFAULT_MAX_PIXELS = 89_478_485

# Pillow format names. MPO (multi-picture JPEG from phones) is opened by the JPEG plugin.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_MAX_DETAIL = 200
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255)


class ImageError(Exception):
    """An input that yields no image. `reason` ("<code>: <detail>") is what a results row records."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in REASON_CODES:
            raise ValueError(f"unknown image error code {code!r}")
        self.code = code
        self.detail = redact(detail)
        self.reason = f"{code}: {self.detail}"
        super().__init__(self.reason)

    def __reduce__(self):  # picklable across process pools despite the two-argument constructor
        return (type(self), (self.code, self.detail))


# -- redaction -----------------------------------------------------------------------------------


def redact(text: str) -> str:
    """One short line with no credentials (`redaction.redact_line`), for an error row's detail."""
    return redact_line(text, _MAX_DETAIL)


# -- decoding ------------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `data` into an HxWx3 uint8 RGB array, or raise `ImageError`.

    The array is C-contiguous and read-only (a view of the bytes Pillow hands over, not a second copy):
    copy it, e.g. into a batch tensor, before writing to it."""
    if not data:
        raise ImageError("empty_file", "0 bytes")
    image = _open(data)
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                "too_many_pixels", f"{width}x{height} = {width * height:,} pixels, limit {max_pixels:,}"
            )
        try:
            image.load()
        except MemoryError:
            raise  # not a property of the input: the caller must see that the process is out of memory
        except Exception as exc:
            raise _load_error(exc, image.format) from exc
        _apply_orientation(image)
        return _to_rgb_array(image)
    finally:
        image.close()


def decode_or_error(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | ImageError:
    """`decode_image`, with every failure that is the image's as its `ImageError` (anything unmapped is
    `corrupt`); out of memory is the process's and propagates."""
    try:
        return decode_image(data, max_pixels)
    except ImageError as exc:
        return exc
    except MemoryError:
        raise
    except Exception as exc:
        return ImageError("corrupt", f"{type(exc).__name__}: {exc}")


def _open(data: bytes) -> Image.Image:
    """Parse the header only: format, mode and size, no pixels yet."""
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise _load_error(exc, _sniff_supported(data)) from exc


def _load_error(exc: Exception, fmt: str | None) -> ImageError:
    what = f"{fmt} " if fmt else ""
    message = str(exc) or type(exc).__name__
    if "truncat" in message.lower():
        return ImageError("truncated", f"{what}data ends early ({message})")
    return ImageError("corrupt", f"{what}data is damaged ({type(exc).__name__}: {message})")


# Leading bytes of the supported formats, to tell a damaged header from bytes that are no image at all.
_SUPPORTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)
# Image formats people do put in buckets, which this engine does not decode.
_UNSUPPORTED_MAGIC = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x01\x00", "ICO"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _sniff_supported(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SUPPORTED_MAGIC if data.startswith(magic)), None)


def _sniff_unsupported(data: bytes) -> str | None:
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF/HEIC"
    head = data[:1024].lstrip()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "SVG"
    return next((fmt for magic, fmt in _UNSUPPORTED_MAGIC if data.startswith(magic)), None)


def _unidentified(data: bytes) -> ImageError:
    supported = _sniff_supported(data)
    if supported:
        return ImageError("corrupt", f"{supported} header cannot be read ({len(data):,} bytes)")
    unsupported = _sniff_unsupported(data)
    if unsupported:
        return ImageError("unsupported", f"{unsupported} images are not decoded")
    return ImageError("not_an_image", f"no supported image format recognised ({len(data):,} bytes)")


def _apply_orientation(image: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: S110 - a damaged EXIF block leaves good pixels; keep them unrotated
        pass


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    try:
        if mode == "RGB" and "transparency" not in image.info:
            rgb = image
        elif mode in _SIXTEEN_BIT_MODES:
            return _sixteen_bit_to_rgb(np.asarray(image))
        elif mode == "F":
            raise ImageError("unsupported", "floating-point pixels (mode F)")
        elif mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, _WHITE)
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = image.convert("RGB")
    except ValueError as exc:  # Pillow has no conversion for this mode (LAB, HSV, exotic TIFF layouts)
        raise ImageError("unsupported", f"pixel mode {mode}: {exc}") from exc
    return np.asarray(rgb)


def _sixteen_bit_to_rgb(values: np.ndarray) -> np.ndarray:
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb.flags.writeable = False  # the same contract as the arrays viewed from Pillow's bytes
    return rgb
