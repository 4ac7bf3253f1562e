"""Image bodies: decoded on the CPU one by one (PIL), or kept as JPEG bytes and decoded a batch at a time
where the model runs (nvJPEG on a GPU, through torchvision).

One CPU core decodes ~1,300 224x224 JPEGs a second; an H100's nvJPEG ~20,000 a batch. A model on a GPU
therefore gets its image requests as `EncodedImage`s: the request's header is checked on arrival (format,
size: a bad image is still a 400 for that request alone), and the pixels are decoded with the batch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Channels of each PNG colour type: greyscale, RGB, palette, greyscale + alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}

# PIL modes of 8 bits per channel: converted to L or RGB and scaled by 255.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# 16-bit greyscale, as PIL opens a 16-bit greyscale PNG: scaled by 65535 (PIL itself turns a PNG of 16 bits
# per colour channel into 8-bit RGB or RGBA). Older Pillow opens those PNGs as "I" (32-bit integers).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_MODE_WORDS = {"I": "32-bit integers", "F": "32-bit floats", "LAB": "CIE L*a*b*", "HSV": "hue, saturation, value",
               "I;16S": "signed 16-bit integers"}


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the picture's size.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, or None if none is found before the pixels.
    Walks the marker segments only: ~1 us where PIL's open takes ~40 us per request."""
    frame = jpeg_frame(data)
    return None if frame is None else (frame[0], frame[1])


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's start-of-frame header (see jpeg_size)."""
    if not data.startswith(JPEG_MAGIC):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS:
            if pos + 10 > end:
                return None
            return (int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big"),
                    data[pos + 9])
        pos += 2 + length
    return None


def png_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(height, width, channels, bits per channel) from a PNG's IHDR, or None if it is not a PNG's."""
    if len(data) < 26 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    channels = _PNG_CHANNELS.get(data[25])
    if channels is None:
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"), channels, data[24]


def image_frame(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, channels) from a JPEG's or PNG's header, without PIL (~1 us), or None."""
    frame = jpeg_frame(data)
    if frame is not None:
        return frame
    png = png_frame(data)
    return None if png is None else png[:3]


def open_header(data: bytes) -> Any:
    """PIL's lazy open (the header only) of PNG or JPEG bytes without PIL's own pixel-count check, which
    warns (DecompressionBombWarning) over 89 M pixels and refuses twice that: only for callers that check
    the size themselves before any pixel is decoded. Raises what PIL raises for bytes it cannot read."""
    from PIL import JpegImagePlugin, PngImagePlugin

    if data.startswith(PNG_MAGIC):
        return PngImagePlugin.PngImageFile(io.BytesIO(data))
    if data.startswith(JPEG_MAGIC):
        return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    raise SyntaxError("neither a PNG nor a JPEG")


def _open_checked(data: bytes, size: tuple[int, int] | None) -> Any:
    """PIL's lazy open (reads the header only), with the size checked before any decoding: a tiny PNG can
    inflate to gigabytes. Raises ValueError saying what is wrong."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    frame = image_frame(data)  # PNG and JPEG: the size is known before PIL sees the bytes
    if size is not None and frame is not None and frame[:2] != size:
        raise _wrong_size(size, frame[:2])
    try:
        if size is not None and frame is not None and _over_pils_warning(frame):
            # the size is the endpoint's, checked just above: PIL's warning would be noise, its limit is kept
            _refuse_over_pils_limit(frame[0], frame[1])
            opened = open_header(data)
        else:
            opened = PILImage.open(io.BytesIO(data))
    except PILImage.DecompressionBombError as exc:
        raise ValueError(f"the image holds more pixels than can be decoded ({exc}). Send a smaller image.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"the bytes are not a readable PNG or JPEG image ({len(data)} bytes received)") from exc
    if size is not None and (opened.height, opened.width) != size:
        opened.close()
        raise _wrong_size(size, (opened.height, opened.width))
    return opened


def _wrong_size(size: tuple[int, int], got: tuple[int, int]) -> ValueError:
    return ValueError(f"expected an image of {size[0]}x{size[1]} pixels. Received: {got[0]}x{got[1]}. "
                      f"Resize it before sending.")


def _over_pils_warning(frame: tuple[int, int, int]) -> bool:
    from PIL import Image as PILImage

    limit = PILImage.MAX_IMAGE_PIXELS
    return limit is not None and frame[0] * frame[1] > limit


def _refuse_over_pils_limit(height: int, width: int) -> None:
    """PIL's hard limit (twice MAX_IMAGE_PIXELS), as PIL's open applies it, with kaon's words."""
    from PIL import Image as PILImage

    limit = PILImage.MAX_IMAGE_PIXELS
    if limit is not None and height * width > 2 * limit:
        raise ValueError(f"the image is {height}x{width} ({height * width:,} pixels), more than the "
                         f"{2 * limit:,} pixels that can be decoded (PIL's decompression-bomb limit). Send a "
                         f"smaller image.")


def decode_image_bytes(data: bytes, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """PNG/JPEG bytes -> float32 (C, H, W) in [0, 1]: 8 bits per channel scaled by 255, 16-bit greyscale by
    65535. Raises ValueError saying what is wrong, also for pixels kaon cannot scale (32-bit, float)."""
    from PIL import Image as PILImage

    opened = _open_checked(data, size)
    with opened:
        full_scale = _full_scale(opened, data)
        try:
            if full_scale == 255:
                array = np.asarray(opened.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
            else:
                grey = np.asarray(opened, dtype=np.float32) / np.float32(full_scale)
                return grey[None] if channels == 1 else np.repeat(grey[None], 3, axis=0)
        except (OSError, PILImage.DecompressionBombError, SyntaxError, ValueError) as exc:
            raise ValueError(f"the bytes are not a readable PNG or JPEG image ({len(data)} bytes received)") from exc
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _full_scale(image: Any, data: bytes) -> int:
    """The pixel value that means 1.0 for an opened image (255 or 65535); ValueError for pixels of no known
    scale, since a guess (or PIL's conversion to 8 bits, which clips) would answer wrongly without a word."""
    mode = image.mode
    if mode in _EIGHT_BIT_MODES:
        return 255
    png = png_frame(data)
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and png is not None and png[2:] == (1, 16)):
        return 65535
    words = _MODE_WORDS.get(mode)
    raise ValueError(
        f"expected a PNG or JPEG of 8 or 16 bits per channel (greyscale, RGB or RGBA), whose pixels kaon scales "
        f"to [0, 1]. Received: an image ({image.format or 'format unknown'}) of PIL mode '{mode}'"
        f"{f' ({words})' if words else ''}, which kaon cannot scale. Convert it before sending, e.g. to an 8-bit "
        f"RGB or a 16-bit greyscale PNG, or send the pixels as a nested array of numbers."
    )


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """A JPEG whose header was checked (format, size) and whose pixels are decoded with its batch."""

    data: bytes
    channels: int  # 1 (gray) or 3 (RGB)
    channels_last: bool  # the endpoint's item is (H, W, C) rather than (C, H, W)

    @classmethod
    def check(cls, data: bytes, channels: int, size: tuple[int, int], channels_last: bool) -> EncodedImage | None:
        """An EncodedImage for JPEG bytes of the right size; None for other formats (decode those now);
        ValueError for bytes that are not a readable image or have the wrong size."""
        if not data.startswith(JPEG_MAGIC):
            return None
        if jpeg_size(data) != size:  # ~1 us; PIL (which words the error) only for the wrong or unreadable
            _open_checked(data, size).close()
        return cls(data, channels, channels_last)

    def decode(self) -> np.ndarray:
        """float32 in [0, 1] on the CPU, laid out as the endpoint's item."""
        array = decode_image_bytes(self.data, self.channels, jpeg_size(self.data))  # the size check() passed
        return array.transpose(1, 2, 0) if self.channels_last else array


def as_array(item: Any) -> np.ndarray:
    """An endpoint item as a numpy array: an EncodedImage decoded on the CPU, anything else as is."""
    return item.decode() if isinstance(item, EncodedImage) else np.asarray(item)


def decode_batch(items: list[Any], device: Any, errors: list[tuple[int, ValueError]] | None = None) -> Any:
    """A float32 torch tensor (N, *item) in [0, 1] on `device` from `EncodedImage`s and decoded arrays.

    The JPEGs go to torchvision's batched decoder on `device` (nvJPEG on a GPU); without torchvision, or
    where it refuses one (a JPEG flavour nvJPEG lacks), each is decoded on the CPU. A JPEG whose header was
    fine but whose data does not decode raises ValueError, or, with an `errors` list, is left out of the
    batch and recorded there as (its index in `items`, the error): one broken upload then fails alone.
    """
    import torch

    device = torch.device(device)
    out: list[Any] = [None] * len(items)
    jpegs = [i for i, item in enumerate(items) if isinstance(item, EncodedImage)]
    for i, item in enumerate(items):
        if not isinstance(item, EncodedImage):
            out[i] = torch.from_numpy(np.ascontiguousarray(item)).to(device)
    if jpegs:
        for i, decoded in zip(jpegs, _decode_jpegs([items[i] for i in jpegs], device), strict=True):
            if isinstance(decoded, ValueError):
                if errors is None:
                    raise decoded
                errors.append((i, decoded))
            else:
                out[i] = decoded
    kept = [(i, t) for i, t in enumerate(out) if t is not None]
    if not kept:
        return torch.empty((0, *_item_shape(items[0])), device=device)
    if all(t.dtype == torch.uint8 and isinstance(items[i], EncodedImage) for i, t in kept):  # one conversion
        batch = torch.stack([t for _, t in kept]).float().div_(255.0)
        return batch.permute(0, 2, 3, 1) if items[kept[0][0]].channels_last else batch
    return torch.stack([_as_item(items[i], t) for i, t in kept])


def _as_item(item: Any, tensor: Any) -> Any:
    """A decoded JPEG's uint8 (C, H, W) as float32 in [0, 1] laid out as the endpoint's item."""
    import torch

    if tensor.dtype != torch.uint8:
        return tensor
    pixels = tensor.float().div_(255.0)
    return pixels.permute(1, 2, 0) if item.channels_last else pixels


def _item_shape(item: Any) -> tuple[int, ...]:
    if isinstance(item, EncodedImage):
        size = jpeg_size(item.data) or (0, 0)
        return (*size, item.channels) if item.channels_last else (item.channels, *size)
    return tuple(np.shape(item))


def _decode_jpegs(images: list[EncodedImage], device: Any) -> list[Any]:
    """For each JPEG: uint8 (C, H, W) from torchvision, float32 laid out as the item from PIL, or a
    ValueError in the place of one that does not decode."""
    import torch

    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return [_pil_tensor(image, device) for image in images]
    by_mode: dict[int, list[int]] = {}
    for i, image in enumerate(images):
        by_mode.setdefault(image.channels, []).append(i)
    result: list[Any] = [None] * len(images)
    for channels, indices in by_mode.items():
        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        raw = [torch.frombuffer(bytearray(images[i].data), dtype=torch.uint8) for i in indices]
        try:
            tensors = decode_jpeg(raw, mode=mode, device=device)
        except RuntimeError:  # one bad or unsupported JPEG fails the call: decode those one by one
            tensors = [_decode_one(images[i], t, mode, device) for i, t in zip(indices, raw, strict=True)]
        for i, tensor in zip(indices, tensors, strict=True):
            result[i] = tensor
    return result


def _pil_tensor(image: EncodedImage, device: Any) -> Any:
    import torch

    try:
        return torch.from_numpy(image.decode()).to(device)
    except ValueError as exc:
        return exc


def _decode_one(image: EncodedImage, raw: Any, mode: Any, device: Any) -> Any:
    from torchvision.io import decode_jpeg

    try:
        return decode_jpeg(raw, mode=mode, device=device)
    except RuntimeError:
        return _pil_tensor(image, device)  # PIL reads flavours nvJPEG lacks; a ValueError if nothing can
