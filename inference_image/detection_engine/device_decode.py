"""`--decode-on-device`: baseline JPEGs decoded where the model runs (nvJPEG on a GPU, batched), the rest by
Pillow on the decode threads (decode.py), as without the switch.

Why: a GPU pod's few CPU threads decode a few hundred photos a second with Pillow, while an H200 can consume
more than that (bench/bench_gpu.py measures both rates); `torchvision.io.decode_jpeg(device="cuda")` decodes
a batch on the GPU from the file's bytes, so the CPUs only fetch.

Which JPEGs go to the device is decided from the marker segments before the first scan, before any pixel,
so that both decoders define the same pixels and the CPU path's promises hold:

- baseline or extended sequential Huffman coding (SOF0/SOF1), 8-bit, three components, coded as YCbCr (no
  Adobe transform other than 1, and no components named R, G, B: libjpeg reads those as RGB-coded, so they
  stay on the CPU, as CMYK/YCCK files do);
- not a multi-picture file (MPO from phones: the CPU takes the first frame);
- no orientation other than 1, in EXIF or in XMP (the CPU path applies either, as Pillow reads them; the
  device decode does not); an EXIF block that does not parse cleanly stays on the CPU too;
- the file ends with its EOI marker (a truncated file goes to Pillow, which refuses it as `truncated`);
- within the pixel limit (the same check as decode.py, on the header's size).

torchvision keeps one nvJPEG decoder per process, for one GPU at a time, behind a lock: asking for another GPU
re-creates it (and leaks the old one's buffers: its destructor is empty, see torchvision's
csrc/io/image/cuda/decode_jpegs_cuda.cpp). So a shard with replicas on several GPUs decodes every batch on
the first GPU that decoded one and copies the pixels to the replica's GPU (uint8, over NVLink or PCIe).

A batch the device decoder raises on is decoded image by image, and an image it raises on alone goes to the
CPU path (`decode_image`), so an image's result (pixels or error code) never depends on the switch beyond
rounding. On a CPU the "device" decode is torchvision's libjpeg-turbo, pixel for pixel Pillow's; nvJPEG's
IDCT and upsampling differ by about a grey level, so on a GPU detections agree by mAP, not bit for bit
(bench_gpu.py measures it).
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from detection_engine.decode import ImageError, decode_or_error

log = logging.getLogger(__name__)

_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential
_NOT_FRAMES = (0xC4, 0xC8, 0xCC)  # DHT, JPG, DAC share the SOF range
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length
_EXIF_ORIENTATION = 0x0112
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb"tiff:Orientation(?:=\"|>)\s*([0-9]+)")  # Pillow's getexif reads it too
_RGB_COMPONENT_IDS = b"RGB"  # libjpeg's sign of an RGB-coded file without a JFIF or Adobe segment
_decoder_gpu: list[torch.device] = []  # the one GPU this process's nvJPEG decoder serves, once claimed
_decoder_gpu_lock = threading.Lock()


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG's bytes, checked to be decodable on the device, with the size its header gives."""

    data: torch.Tensor  # 1-D uint8: the whole file
    height: int
    width: int
    max_pixels: int  # the CPU path's limit, for a fallback decode

    @property
    def shape(self) -> tuple[int, int, int]:
        """HxWx3, as a decoded host tensor's."""
        return (self.height, self.width, 3)


def device_decodable(data: bytes, max_pixels: int) -> EncodedJpeg | None:
    """The image as an `EncodedJpeg` when the device may decode it (the module's rules), else None."""
    try:
        frame = _frame_header(data)
    except (IndexError, ValueError):
        return None
    if frame is None:
        return None
    height, width = frame
    if height * width > max_pixels or not data.endswith(b"\xff\xd9"):
        return None
    return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), height, width, max_pixels)


def _frame_header(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG the device may decode, read from the segments before its first scan."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, frame = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) < length - 2:
            return None
        if marker == 0xDA:  # start of scan: every header segment has been seen
            return frame
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_FRAMES:
            if frame is not None or marker not in _SEQUENTIAL_HUFFMAN or len(segment) < 6:
                return None
            precision, height, width, components = (
                segment[0],
                int.from_bytes(segment[1:3], "big"),
                int.from_bytes(segment[3:5], "big"),
                segment[5],
            )
            if precision != 8 or components != 3 or height == 0 or width == 0 or len(segment) < 15:
                return None
            if bytes(segment[6:15:3]) == _RGB_COMPONENT_IDS:
                return None
            frame = (height, width)
        elif not _app_segment_allows(marker, segment):
            return None
        pos += 2 + length
    return None  # no scan: not a whole JPEG


def _app_segment_allows(marker: int, segment: bytes) -> bool:
    if marker == 0xEE and segment.startswith(b"Adobe"):  # APP14: the colour transform is byte 11
        return len(segment) >= 12 and segment[11] == 1
    if marker == 0xE2 and segment.startswith(b"MPF\x00"):  # APP2: a multi-picture file
        return False
    if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
        try:
            return _exif_orientations(segment[6:]) <= {1}
        except (struct.error, ValueError):
            return False  # not clean: how Pillow reads it is its business, on the CPU path
    if marker == 0xE1 and segment.startswith(_XMP):
        return all(value == b"1" for value in _XMP_ORIENTATION.findall(segment))
    return True


def _exif_orientations(tiff: bytes) -> set[int]:
    """Every orientation entry of the first IFD (where Pillow reads it); raises on a malformed block."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        raise ValueError("no byte order")
    magic, offset = struct.unpack(order + "HI", tiff[2:8])
    if magic != 42:
        raise ValueError("not TIFF")
    (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
    found = set()
    for start in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind, values = struct.unpack(order + "HHI", tiff[start : start + 8])
        if tag == _EXIF_ORIENTATION:
            if kind != 3 or values != 1:  # one SHORT, as the standard has it
                raise ValueError("odd orientation entry")
            found.add(struct.unpack(order + "H", tiff[start + 8 : start + 10])[0])
    return found


@dataclass
class Decoded:
    """`decode_batch`'s answer: per image 3xHxW uint8 on the device or an `ImageError`, and how many the
    device decoded (the rest went to the CPU path)."""

    images: list[torch.Tensor | ImageError]
    on_device: int


def decode_batch(images: Sequence[EncodedJpeg], device: torch.device) -> Decoded:
    """Each image decoded: one batched device call; if it raises, one call per image; an image that raises
    alone is decoded by Pillow (decode.py) and copied to the device. Out of memory is not an image's fault:
    it propagates, for the Detector to halve the batch."""
    if not images:
        return Decoded([], 0)
    try:
        return Decoded(_decode([image.data for image in images], device), len(images))
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        log.warning("device decode of %d JPEGs raised %s; one by one", len(images), type(exc).__name__)
    decoded = [_decode_alone(image, device) for image in images]
    return Decoded([image for image, _ in decoded], sum(on_device for _, on_device in decoded))


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    where = decoder_device(device)
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=where)
    return [image if where == device else image.to(device, non_blocking=True) for image in decoded]


def decoder_device(device: torch.device) -> torch.device:
    """Where images for `device` are decoded: a CPU on itself; a GPU on the first GPU any replica decoded on
    (torchvision's one decoder per process: the module docstring)."""
    if device.type != "cuda":
        return device
    with _decoder_gpu_lock:
        if not _decoder_gpu:
            index = device.index if device.index is not None else torch.cuda.current_device()
            _decoder_gpu.append(torch.device("cuda", index))
        return _decoder_gpu[0]


def _decode_alone(image: EncodedJpeg, device: torch.device) -> tuple[torch.Tensor | ImageError, bool]:
    try:
        return _decode([image.data], device)[0], True
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        log.warning("device decode of a JPEG raised %s; decoding it on the CPU", type(exc).__name__)
    return _cpu_decode(image, device), False


def _cpu_decode(image: EncodedJpeg, device: torch.device) -> torch.Tensor | ImageError:
    pixels = decode_or_error(image.data.numpy().tobytes(), image.max_pixels)  # as the decode threads do
    if isinstance(pixels, ImageError):
        return pixels
    return torch.from_numpy(pixels.copy()).to(device).permute(2, 0, 1)  # the decoder's arrays are read-only
