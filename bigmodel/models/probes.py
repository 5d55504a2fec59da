"""Inputs that exercise a role graph: real images, prior samples, and latents out to ±4σ.

Export's built-in check and `bigmodel parity` both draw from here, so what "verified" means is
defined once. Everything is numpy float32, drawn from a seeded `numpy.random.Generator`.
"""

from __future__ import annotations

import numpy as np

EXTREME_SIGMA = 4.0  # fp16 overflows first out here


def latent_probes(dim: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal codes and codes pushed to ±4σ: {"prior": (n, dim), "extreme": (n, dim)}."""
    rng = np.random.default_rng(seed)
    prior = rng.standard_normal((n, dim), dtype=np.float32)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(n, dim))
    extreme = (signs * EXTREME_SIGMA).astype(np.float32)
    extreme[: n // 2] = np.clip(prior[: n // 2] * EXTREME_SIGMA, -EXTREME_SIGMA, EXTREME_SIGMA)
    return {"prior": prior, "extreme": extreme}


def image_probes(val_images: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """Real validation images (first seeded pick of n) and one batch of uniform noise images."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(val_images), size=min(n, len(val_images)), replace=False)
    noise = rng.random((n, *val_images.shape[1:]), dtype=np.float32)
    return {"val": np.ascontiguousarray(val_images[np.sort(pick)], dtype=np.float32), "noise": noise}


def role_probes(kind: str, latent_dim: int, val_images: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """Probe sets for a role whose single input is of `kind` ("image" or "latent")."""
    if kind == "image":
        return image_probes(val_images, n, seed)
    return latent_probes(latent_dim, n, seed)
