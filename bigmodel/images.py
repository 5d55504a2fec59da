"""Image grids as PNG (numpy + Pillow; no torch), shared by training and the runtime CLI."""

from __future__ import annotations

import io
import os

import numpy as np

from bigmodel.errors import InputError, missing_package
from bigmodel.fileio import atomic_write_bytes


def grid(images: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 (rows*(H+pad)+pad, ..., C) picture."""
    if images.ndim != 4:
        raise InputError(f"grid expects images of shape (N, C, H, W); got shape {images.shape}")
    n, c, h, w = images.shape
    rows = -(-n // ncol)
    out = np.zeros((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    pixels = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)  # (N, H, W, C)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = pixels[i]
    return out


def save_png(path: str | os.PathLike, picture: np.ndarray, upscale: int = 1) -> None:
    """Write an (H, W, C) uint8 picture as PNG, atomically; `upscale` enlarges small digits."""
    try:
        from PIL import Image
    except ImportError as e:
        raise missing_package("pillow", "runtime", "writing PNG images") from e
    mode = "L" if picture.shape[2] == 1 else "RGB"
    img = Image.fromarray(picture[..., 0] if mode == "L" else picture, mode=mode)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_grid(path: str | os.PathLike, images: np.ndarray, ncol: int = 8) -> None:
    """Save (N, C, H, W) images in [0, 1] as a PNG grid; digits smaller than 32 px are enlarged."""
    side = images.shape[-1]
    save_png(path, grid(images, ncol), upscale=max(1, 64 // max(side, 1)) if side < 32 else 1)
