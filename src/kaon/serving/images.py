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


def _open_checked(data: bytes, size: tuple[int, int] | None) -> Any:
    """PIL's lazy open (reads the header only), with the size checked before any decoding: a tiny PNG can
    inflate to gigabytes. Raises ValueError saying what is wrong."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        opened = PILImage.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, PILImage.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"the bytes are not a readable PNG or JPEG image ({len(data)} bytes received)") from exc
    if size is not None and (opened.height, opened.width) != size:
        opened.close()
        raise ValueError(f"expected an image of {size[0]}x{size[1]} pixels. Received: {opened.height}x"
                         f"{opened.width}. Resize it before sending.")
    return opened


def decode_image_bytes(data: bytes, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """PNG/JPEG bytes -> float32 (C, H, W) in [0, 1]. Raises ValueError saying what is wrong."""
    from PIL import Image as PILImage

    opened = _open_checked(data, size)
    try:
        with opened:
            img = opened.convert("L" if channels == 1 else "RGB")
        array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, PILImage.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise ValueError(f"the bytes are not a readable PNG or JPEG image ({len(data)} bytes received)") from exc
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


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
        array = decode_image_bytes(self.data, self.channels, None)
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
