"""How an image file becomes what the model sees: the one implementation that ingest, evaluation and serving share.

1. **Upright:** the EXIF orientation a camera wrote is applied, so a photo stored sideways is
   trained, scored and served the way it looks (the manifest records the upright size).
2. **Channels:** any decoded mode becomes 8-bit grey (``L``) or ``RGB``: 16-bit and float images
   are scaled to 8 bits, transparency is composited over black (or the row is refused, by setting).
3. **Stored square:** the image becomes ``store_size`` square by the ``resize`` policy
   (``letterbox``, ``squash`` or ``crop``, see :class:`Preprocessing`). Ingest writes this to the shards.
4. **Model input:** the centre ``size`` square of the stored image (training takes random crops of
   it instead), as float32 NCHW in [0, 1]. The per-channel ``mean``/``std`` are applied inside the
   model (its first module), so every caller feeds the same tensor.

``spec.json`` records all of it (:meth:`Preprocessing.to_dict`), so a served model needs nothing else.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

NATIVE_MODES = frozenset({"1", "L", "P", "RGB"})
HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
RESIZE_POLICIES = ("letterbox", "squash", "crop")
_ORIENTATION = 0x0112  # the EXIF tag


class UnsupportedMode(ValueError):
    """The image decoded, but its mode is one the configuration rejects."""


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned the way its EXIF orientation says it is seen (itself when it says nothing)."""
    if image.getexif().get(_ORIENTATION, 1) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def to_channels(image: Image.Image, channels: int, reject_unusual: bool = False) -> Image.Image:
    """Any decoded mode as 8-bit ``L`` (1 channel) or ``RGB`` (3), or :class:`UnsupportedMode` if refused."""
    mode = image.mode
    transparent = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if mode not in NATIVE_MODES or transparent:
        if reject_unusual:
            kind = "alpha" if transparent else "16/32-bit" if mode in HIGH_DEPTH_MODES else mode
            raise UnsupportedMode(f"unsupported mode {mode} ({kind}); ingest.unsupported_modes=reject")
        if mode in HIGH_DEPTH_MODES:
            # 16-bit integer images span 0..65535; float images are taken as 0..255 already.
            scale = 1.0 if mode == "F" else 257.0
            values = np.clip(np.asarray(image, dtype=np.float64) / scale, 0, 255).astype(np.uint8)
            image = Image.fromarray(values, "L")
        elif transparent:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)  # convert() to the same mode copies


def square(image: Image.Image, side: int, policy: str) -> np.ndarray:
    """An 8-bit L/RGB image as a ``side`` x ``side`` uint8 HWC array, by the resize ``policy``."""
    channels = len(image.getbands())
    width, height = image.size
    if (width, height) == (side, side):
        return np.asarray(image, dtype=np.uint8).reshape(side, side, channels)
    if policy == "squash" or width == height:
        resized = image.resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8).reshape(side, side, channels)
    if policy not in ("letterbox", "crop"):
        raise ValueError(f"unknown resize policy {policy!r}; choose one of {', '.join(RESIZE_POLICIES)}")
    fit = max if policy == "letterbox" else min  # letterbox: the longer side fits; crop: the shorter one
    scale = side / fit(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pixels = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
    pixels = pixels.reshape(new_h, new_w, channels)
    if policy == "crop":
        top, left = (new_h - side) // 2, (new_w - side) // 2
        return np.ascontiguousarray(pixels[top : top + side, left : left + side])
    canvas = np.zeros((side, side, channels), dtype=np.uint8)
    top, left = (side - new_h) // 2, (side - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = pixels
    return canvas


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of stored uint8 NHWC images (what evaluation and serving see)."""
    height, width = images.shape[1:3]
    if height == size and width == size:
        return images
    top, left = (height - size) // 2, (width - size) // 2
    return images[:, top : top + size, left : left + size]


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC rows as the model's float32 NCHW input in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


@dataclass(frozen=True)
class Preprocessing:
    """Everything between an image file and the model's input tensor, as ``spec.json`` records it.

    ``resize`` is how a non-square image becomes a square: ``letterbox`` (the default) scales the
    longer side to ``store_size`` and pads the rest with black, so no pixel is lost and no shape is
    distorted, at the cost of a border the network learns to ignore; ``squash`` stretches (a round
    object turns oval, differently for each aspect ratio); ``crop`` scales the shorter side and
    cuts the centre (whatever sits near the long edges is gone).
    """

    store_size: int
    size: int
    channels: int
    resize: str = "letterbox"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    exif_orientation: bool = True

    @classmethod
    def from_settings(cls, image: Any) -> Preprocessing:
        """From an :class:`ml.config.ImageConfig`."""
        return cls(image.stored, image.size, image.channels, image.resize, tuple(image.mean), tuple(image.std))

    @classmethod
    def from_dict(cls, record: dict[str, Any] | None, image_size: int, channels: int) -> Preprocessing:
        """From ``spec.json``; a spec written before ct recorded it squashed to ``image_size`` and stored no more."""
        if not record:
            return cls(image_size, image_size, channels, "squash", exif_orientation=False)
        return cls(int(record["store_size"]), int(record["size"]), int(record["channels"]), str(record["resize"]),
                   tuple(record["mean"]), tuple(record["std"]), bool(record.get("exif_orientation", True)))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std),
                "color": "L" if self.channels == 1 else "RGB", "input": "centre crop of size, float32 NCHW / 255",
                "normalise": "(x - mean) / std, inside the model"}  # fmt: skip

    def stored(self, image: Image.Image, reject_unusual: bool = False) -> tuple[Image.Image, np.ndarray]:
        """A decoded image upright in the model's colour mode, and its stored square (what the shards hold)."""
        image = to_channels(upright(image) if self.exif_orientation else image, self.channels, reject_unusual)
        return image, square(image, self.store_size, self.resize)

    def model_input(self, stored: np.ndarray) -> np.ndarray:
        """Stored uint8 NHWC squares as the model's float32 NCHW input (the centre window)."""
        return to_input(center_crop(stored, self.size))

    def decoded(self, data: bytes) -> Image.Image:
        """One encoded image file (PNG, JPEG, ...) decoded, upright and in the model's colour mode."""
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_channels(upright(image) if self.exif_orientation else image, self.channels)

    def input_of(self, image: Image.Image) -> np.ndarray:
        """A :meth:`decoded` image as a float32 CHW input row."""
        return self.model_input(square(image, self.store_size, self.resize)[None])[0]

    def from_bytes(self, data: bytes) -> np.ndarray:
        """One encoded image file as a float32 CHW input row: the serving path."""
        return self.input_of(self.decoded(data))
