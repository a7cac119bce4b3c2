"""decode_image over the bad-input corpus and the pixel rules it promises (orientation, alpha, 16-bit, bombs)."""

from __future__ import annotations

import io
import json
import pickle
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from detection_engine.decode import DEFAULT_MAX_PIXELS, REASON_CODES, ImageError, decode_image
from tests import bad_inputs
from tests.bad_inputs import by_name, file_case_names, write_corpus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return by_name(write_corpus(tmp_path_factory.mktemp("corpus")))


def _decode_case(corpus, name: str, **kwargs) -> np.ndarray:
    return decode_image(corpus[name].data(), **kwargs)


@pytest.mark.parametrize("name", file_case_names())
def test_each_corpus_file_has_its_expected_outcome(corpus, name):
    case = corpus[name]
    if case.ok:
        pixels = decode_image(case.data())
        width, height = case.size
        assert pixels.shape == (height, width, 3)
        assert pixels.dtype == np.uint8
        assert pixels.flags.c_contiguous
        assert not pixels.flags.writeable
    else:
        with pytest.raises(ImageError) as caught:
            decode_image(case.data())
        error = caught.value
        assert error.code == case.error_code
        assert str(error) == error.reason == f"{error.code}: {error.detail}"
        assert error.detail and "\n" not in error.reason


def test_exif_orientation_is_applied(corpus):
    pixels = _decode_case(corpus, "exif_rotated")  # stored 64x32 red|blue, orientation 6: viewed red on top
    assert pixels.shape == (64, 32, 3)
    assert _close(pixels[16, 16], (255, 0, 0))
    assert _close(pixels[48, 16], (0, 0, 255))


def test_sixteen_bit_grey_is_scaled_not_clipped(corpus):
    pixels = _decode_case(corpus, "png_16bit")
    bands = [pixels[5 * i : 5 * i + 5] for i in range(len(bad_inputs.SIXTEEN_BIT_VALUES))]
    assert [np.unique(band).tolist() for band in bands] == [[0], [1], [128], [255]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_tiff_in_either_byte_order(mode):
    values = np.array([[0, 257, 32768, 65535]], dtype="<u2" if mode == "I;16" else ">u2")
    image = Image.frombytes(mode, (4, 1), values.tobytes())
    pixels = decode_image(_encode(image, "TIFF"))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]


def test_transparent_pixels_become_white(corpus):
    rgba = _decode_case(corpus, "rgba")  # left opaque red, right fully transparent blue
    assert _close(rgba[10, 5], (255, 0, 0), tolerance=0)
    assert _close(rgba[10, 25], (255, 255, 255), tolerance=0)

    palette = _decode_case(corpus, "palette_transparent")  # left transparent index, right green
    assert _close(palette[12, 4], (255, 255, 255), tolerance=0)
    assert _close(palette[12, 28], (0, 160, 0), tolerance=0)


def test_half_transparent_grey_is_blended_onto_white(corpus):
    pixels = _decode_case(corpus, "grey_alpha")  # grey 90 at alpha 128
    expected = round(90 * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.all(np.abs(pixels.astype(int) - expected) <= 1)


def test_cmyk_jpeg_keeps_its_colour(corpus):
    pixels = _decode_case(corpus, "cmyk_jpeg")  # C=0 M=255 Y=255 K=0 is red
    assert _close(pixels[16, 24], (255, 0, 0), tolerance=8)


def test_animated_gif_gives_its_first_frame(corpus):
    pixels = _decode_case(corpus, "animated_gif")
    assert _close(pixels[12, 12], (255, 0, 0), tolerance=0)


def test_single_channel_images_become_three_equal_channels(corpus):
    for name in ("grayscale", "one_bit", "png_16bit"):
        pixels = _decode_case(corpus, name)
        assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(
            pixels[..., 0], pixels[..., 2]
        )
    assert set(np.unique(_decode_case(corpus, "one_bit")).tolist()) == {0, 255}


def test_multi_picture_jpeg_gives_its_first_picture():
    """Phones write MPO (several JPEGs in one file); Pillow opens it through the JPEG plugin."""
    first, second = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    pixels = decode_image(buffer.getvalue())
    assert pixels.shape == (10, 20, 3)
    assert _close(pixels[5, 10], (255, 0, 0))


def test_one_pixel_image(corpus):
    assert _decode_case(corpus, "one_pixel").tolist() == [[[10, 200, 30]]]


def test_pixel_limit_is_checked_against_the_argument(corpus):
    width, height = corpus["jpeg"].size
    assert decode_image(corpus["jpeg"].data(), max_pixels=width * height).shape == (height, width, 3)
    with pytest.raises(ImageError, match=r"^too_many_pixels: 64x48 = 3,072 pixels, limit 3,071$"):
        decode_image(corpus["jpeg"].data(), max_pixels=width * height - 1)


def test_pillows_own_bomb_error_is_reported_as_too_many_pixels():
    huge = bad_inputs.decompression_bomb_png((50_000, 50_000))  # over twice Pillow's MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as caught:
        decode_image(huge, max_pixels=10**12)
    assert caught.value.code == "too_many_pixels"


def test_bomb_is_refused_without_allocating_its_pixels():
    """In a process whose heap is capped at 256 MiB, the 120 MP bomb (480 MB to decode) is refused from its
    header. The control decodes it with the limit lifted and must run out of memory, which proves the cap
    would have caught an allocation."""
    script = f"""
import json, resource, sys, warnings
sys.path[:0] = {[str(ROOT / "inference_image"), str(ROOT)]!r}
warnings.simplefilter("ignore")
from detection_engine.decode import ImageError, decode_image
from tests.bad_inputs import decompression_bomb_png
resource.setrlimit(resource.RLIMIT_DATA, (256 << 20, 256 << 20))
bomb = decompression_bomb_png()
outcome = {{}}
for name, limit in (("default", {DEFAULT_MAX_PIXELS}), ("lifted", 10**9)):
    try:
        decode_image(bomb, max_pixels=limit)
        outcome[name] = "decoded"
    except ImageError as exc:
        outcome[name] = exc.code
    except MemoryError:
        outcome[name] = "MemoryError"
print(json.dumps(outcome))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"default": "too_many_pixels", "lifted": "MemoryError"}


def test_formats_outside_the_allowlist_are_unsupported():
    icon = _encode(Image.new("RGB", (16, 16), (1, 2, 3)), "ICO")
    with pytest.raises(ImageError, match=r"^unsupported: ICO"):
        decode_image(icon)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow cannot write AVIF")
def test_avif_is_unsupported():
    with pytest.raises(ImageError, match=r"^unsupported: AVIF"):
        decode_image(_encode(Image.new("RGB", (16, 16)), "AVIF"))


def test_floating_point_pixels_are_unsupported():
    with pytest.raises(ImageError, match=r"^unsupported: floating-point"):
        decode_image(_encode(Image.new("F", (8, 8), 0.5), "TIFF"))


def test_truncated_png_is_truncated():
    data = _encode(Image.frombytes("RGB", (48, 48), random.Random(3).randbytes(48 * 48 * 3)), "PNG")
    with pytest.raises(ImageError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.code == "truncated"


def test_decoding_leaves_pillow_globals_alone(corpus):
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    for name in file_case_names():
        _outcome(corpus[name].data())
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before == (False, 89_478_485)


def test_concurrent_decoding_matches_sequential(corpus):
    names = file_case_names() * 8
    random.Random(5).shuffle(names)
    expected = {name: _outcome(corpus[name].data()) for name in set(names)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda name: _outcome(corpus[name].data()), names))
    for name, result in zip(names, results, strict=True):
        assert result == expected[name], name


# -- ImageError ----------------------------------------------------------------------------------


def test_image_error_codes_are_the_fixed_set():
    assert set(REASON_CODES) == {
        "not_found",
        "permission_denied",
        "is_directory",
        "empty_file",
        "fetch_error",
        "not_a_regular_file",
        "too_large",
        "timeout",
        "not_an_image",
        "truncated",
        "corrupt",
        "too_many_pixels",
        "unsupported",
        "too_thin",
        "model_error",
        "out_of_memory",
    }
    with pytest.raises(ValueError, match="unknown image error code"):
        ImageError("bad_luck", "nope")


def test_image_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ImageError("corrupt", "PNG data is damaged")))
    assert (type(error), error.code, error.reason) == (ImageError, "corrupt", "corrupt: PNG data is damaged")


def test_image_error_never_carries_credentials():
    detail = (
        "GET https://alice:s3cret@example.com/a.jpg?X-Goog-Signature=abc123&X-Goog-Credential=me failed\n"
        "retry with access_token=ya29.tokenvalue and Authorization: Bearer ya29.bearervalue"
    )
    reason = ImageError("fetch_error", detail).reason
    for secret in ("s3cret", "abc123", "X-Goog-Credential", "ya29.tokenvalue", "ya29.bearervalue"):
        assert secret not in reason
    assert "https://example.com/a.jpg" in reason
    assert "\n" not in reason


def test_image_error_detail_is_short():
    assert len(ImageError("corrupt", "x" * 5000).reason) <= len("corrupt: ") + 200


# -- helpers -------------------------------------------------------------------------------------


def _outcome(data: bytes):
    try:
        pixels = decode_image(data)
    except ImageError as exc:
        return exc.reason
    return pixels.shape, pixels.tobytes()


def _close(pixel, rgb, tolerance: int = 6) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, rgb, strict=True))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_decode_or_error_gives_every_failure_of_the_image_as_its_error_and_nothing_else(monkeypatch):
    from detection_engine import decode

    assert decode.decode_or_error(b"").code == "empty_file"
    good = io.BytesIO()
    Image.new("RGB", (4, 3), (1, 2, 3)).save(good, "PNG")
    assert decode.decode_or_error(good.getvalue()).shape == (3, 4, 3)

    def raises(error):
        def decode_image(data, max_pixels):
            raise error

        monkeypatch.setattr(decode, "decode_image", decode_image)

    raises(RuntimeError("a plugin bug"))  # unmapped: still this image's error, never the shard's
    assert decode.decode_or_error(b"x").reason == "corrupt: RuntimeError: a plugin bug"
    raises(MemoryError())  # the process's, not the image's
    with pytest.raises(MemoryError):
        decode.decode_or_error(b"x")
