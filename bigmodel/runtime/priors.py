"""The latent prior drawn with numpy's Generator: the same seed gives the same codes everywhere."""

from __future__ import annotations

import numpy as np

from bigmodel.errors import BundleError
from bigmodel.manifest import LatentSpec


def draw(latent: LatentSpec, n: int, seed: int | None) -> np.ndarray:
    """n codes from the manifest's prior, (n, dim) float32."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent.dim), dtype=np.float32)
    if latent.prior == "normal":
        return z
    if latent.prior == "mixture":
        means = np.asarray(latent.params["means"], dtype=np.float32)  # (components, dim)
        k = rng.integers(len(means), size=n)
        return means[k] + np.float32(latent.params["std"]) * z
    raise BundleError(f"unknown latent prior {latent.prior!r} in manifest; expected normal or mixture")


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between codes a and b (dim,) at fractions t (steps,) -> (steps, dim)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(np.clip(np.dot(a / na, b / nb), -1.0, 1.0)) if na > 0 and nb > 0 else 1.0
    omega = np.arccos(cos)
    if omega < 1e-6:
        return (1 - t)[:, None] * a + t[:, None] * b
    return (np.sin((1 - t) * omega)[:, None] * a + np.sin(t * omega)[:, None] * b) / np.sin(omega)
