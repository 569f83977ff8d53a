"""Images for text+image tasks: open from a path, raw bytes or base64 (RGB), decode each file once,
and augment training images with PIL (flips, crops, colour jitter; no torchvision)."""

from __future__ import annotations

import base64
import binascii
import io
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance

from unitask.config import ImageAugment
from unitask.errors import DataError


def open_image(source: Any, root: Path | None = None) -> Image.Image:
    """An RGB image from a path (relative to `root`), raw bytes or a base64 string; DataError with
    the reason when it is missing or cannot be decoded."""
    if isinstance(source, (bytes, bytearray)):
        return _decode(bytes(source), "image bytes")
    if not isinstance(source, str) or not source:
        raise DataError(f"image: expected a file path, bytes or a base64 string, got {type(source).__name__}")
    path = Path(source)
    if root is not None and not path.is_absolute():
        path = root / path
    if _is_file(path):
        return _decode(path.read_bytes(), str(path))
    if len(source) >= 64:  # a base64-encoded image; a path this long that does not exist is reported below
        try:
            return _decode(base64.b64decode(source, validate=True), "base64 image")
        except (binascii.Error, ValueError):
            pass
    raise DataError(f"image: no such file {_short(str(path))}", hint="pass an existing file path, raw bytes or base64")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a base64 string longer than a file name may be
        return False


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image: cannot decode {what}: {exc}", hint="the file is not a readable image") from None


class ImageCache:
    """Decoded RGB images by path, each file decoded once (easy-VQA: ~48k rows over 5,000 images)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._images: dict[str, Image.Image] = {}

    def __call__(self, path: str) -> Image.Image:
        if path not in self._images:
            self._images[path] = open_image(path, self.root)
        return self._images[path]


class Augmenter:
    """Random PIL changes drawn from a seeded generator; used on training rows only."""

    def __init__(self, settings: ImageAugment, seed: int) -> None:
        self.settings = settings
        self.rng = random.Random(seed)

    def __call__(self, image: Image.Image) -> Image.Image:
        s, rng = self.settings, self.rng
        if rng.random() < s.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < s.crop:
            w, h = image.size
            cw, ch = max(1, round(w * rng.uniform(s.crop_scale, 1))), max(1, round(h * rng.uniform(s.crop_scale, 1)))
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BILINEAR)
        if rng.random() < s.color_jitter:
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                image = enhance(image).enhance(rng.uniform(1 - s.jitter_strength, 1 + s.jitter_strength))
        return image
