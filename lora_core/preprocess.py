"""Turn any digit picture (a drawing canvas, a photo, a scan) into the 28x28 input MNIST models expect.

MNIST's own recipe: crop the ink, scale its bounding box to fit 20x20 keeping the aspect ratio, and
place it in a 28x28 field with its centre of mass at the centre (index 14, 14: the mean centre of
mass of MNIST's test digits, measured 13.99, 14.00). Light ink on dark or dark ink on light is
detected from the border. The dashboard canvas and `python -m lora_core predict` both use this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_core.data import normalize
from lora_core.errors import ImageError
from lora_core.evaluate import predict
from lora_core.model import SIDE

SIZE = SIDE
BOX = 20
CENTRE = 14.0
INK_THRESHOLD = 0.2  # of full contrast: fainter pixels count as background (JPEG noise, paper texture)
MIN_INK_FRACTION = 0.0002  # less ink than this share of the picture is "nothing drawn yet"
MIN_INK_PIXELS = 16
MIN_BOX_FRACTION = 0.03  # ink spanning under 3% of the picture's shorter side is a speck, not a digit
MIN_BOX_PIXELS = 6
MAX_IMAGE_PIXELS = 40_000_000  # decoded once at most: 160 MB in RGBA
# A picture is brought down to this side as it is read: the digit ends up 20 pixels tall, and the steps that find
# it (gray, ink, border, box) work on floats of every pixel, several bytes each (3.1 GB for 6300x6300).
WORKING_SIDE = 1024


@dataclass
class PreparedDigit:
    pixels: np.ndarray  # (28, 28) float32 in 0..1, white ink on black: what the model sees
    tensor: torch.Tensor  # (1, 784), normalised like the training data
    inverted: bool  # True when the input was dark ink on a light background


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array (uint8 or floats in 0..1) -> HxW float32 in 0..1.

    With a varying alpha channel (a canvas with a transparent background, a PNG cut-out) the ink is
    wherever the picture is opaque, whatever its colour.
    """
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(f"expected an HxW gray or HxWx3/4 colour image, got an array of shape {a.shape}")
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if np.issubdtype(np.asarray(image).dtype, np.integer) or a.max(initial=0.0) > 1.0:
        a = a / 255.0
    a = a.clip(0.0, 1.0).astype(np.float32)
    if a.ndim == 2:
        return a
    if a.shape[2] == 1:
        return a[:, :, 0]
    gray = a[:, :, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if a.shape[2] == 4:
        alpha = a[:, :, 3]
        if alpha.max() - alpha.min() > 0.5:
            return alpha
    return gray


def prepare_digit(image: np.ndarray, invert: bool | None = None) -> PreparedDigit | None:
    """MNIST-style 28x28 digit from `image`, or None when (nearly) nothing is drawn.

    invert: None detects the polarity from the border; True forces dark-ink-on-light handling.
    """
    gray = to_gray(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if invert is None:
        invert = background > 0.5
    if invert:
        gray = 1.0 - gray
        background = 1.0 - background
    peak = float(gray.max())
    if peak - background < 0.15:
        return None
    ink = ((gray - background) / (peak - background)).clip(0.0, 1.0)
    ink[ink < INK_THRESHOLD] = 0.0
    mask = ink > 0
    ink_pixels = int(mask.sum())
    if ink_pixels < max(MIN_INK_PIXELS, MIN_INK_FRACTION * mask.size):
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    span = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    if span < max(MIN_BOX_PIXELS, MIN_BOX_FRACTION * min(mask.shape)):
        return None
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pixels = _centre(_fit_box(crop))
    tensor = normalize(torch.from_numpy(pixels * 255.0).reshape(1, SIZE * SIZE))
    return PreparedDigit(pixels, tensor, bool(invert))


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Scale so the longer side is exactly 20 px, keeping the aspect ratio (antialiased)."""
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
    small = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    small = small.clamp(0.0, 1.0).numpy()
    peak = small.max()
    return small / peak if peak > 0 else small


def _centre(small: np.ndarray) -> np.ndarray:
    """Place the box in 28x28 so its centre of mass lands within half a pixel of (14, 14)."""
    h, w = small.shape
    total = small.sum()
    cy = float((small.sum(axis=1) * np.arange(h)).sum() / total)
    cx = float((small.sum(axis=0) * np.arange(w)).sum() / total)
    top = int(np.clip(round(CENTRE - cy), 0, SIZE - h))
    left = int(np.clip(round(CENTRE - cx), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top : top + h, left : left + w] = small
    return out


def load_image(path: Path | str) -> np.ndarray:
    """Read a PNG, JPEG or any picture Pillow knows into an array (EXIF rotation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a folder; give a picture file (the command line reads a folder's pictures)")
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():  # reading a FIFO, a terminal or /dev/zero would wait or never end
        raise ImageError(f"{path} is not a regular file (a device, pipe or socket); give a picture file")
    try:
        with Image.open(path) as img:  # Pillow itself refuses above 2x its own limit (DecompressionBombError)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{path}: {img.width}x{img.height} is too large for a digit picture")
            img.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)  # a JPEG is decoded smaller already
            img = ImageOps.exif_transpose(img)  # the EXIF orientation survives thumbnail
            mode = "RGBA" if "A" in img.getbands() or img.mode == "P" else "RGB"
            return np.asarray(img.convert(mode))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too large for a digit picture ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc


def predict_probabilities(model: nn.Module, prepared: PreparedDigit) -> np.ndarray:
    """The model's ten class probabilities for one prepared digit."""
    return torch.softmax(predict(model, prepared.tensor), dim=1)[0].numpy()
