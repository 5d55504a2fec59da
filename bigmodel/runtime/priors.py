"""The latent prior drawn with numpy's Generator: the same seed gives the same codes on every backend.

normal: z ~ N(0, I). mixture: a component k ~ Categorical(weights, default uniform), then
z = means[k] + std * N(0, I). Codes are drawn on the host, never inside a graph.
"""

from __future__ import annotations

import numpy as np

from bigmodel.errors import BundleError
from bigmodel.manifest import LatentSpec

PRIORS = ("normal", "mixture")


class Prior:
    """A manifest's prior, checked and converted to arrays once at load."""

    def __init__(self, latent: LatentSpec):
        if not isinstance(latent.dim, int) or latent.dim < 1:
            raise BundleError(f"manifest latent.dim must be a positive integer; got {latent.dim!r}")
        if latent.prior not in PRIORS:
            raise BundleError(f"unknown latent prior {latent.prior!r} in manifest; expected one of {', '.join(PRIORS)}")
        self.dim, self.kind = latent.dim, latent.prior
        self.means = self.std = self.weights = None
        if self.kind == "mixture":
            p = latent.params
            try:
                self.means = np.asarray(p["means"], dtype=np.float32)
                self.std = np.float32(p["std"])
                self.weights = None if p.get("weights") is None else np.asarray(p["weights"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise BundleError(f"mixture prior needs params means (components, {self.dim}) and std; "
                                  f"got {sorted(p)}: {e}") from e
            k = len(self.means)
            if self.means.ndim != 2 or self.means.shape[1] != self.dim or k < 1:
                raise BundleError(f"mixture prior: expected means of shape (components, {self.dim}); "
                                  f"got {self.means.shape}")
            if not (np.isfinite(self.std) and self.std > 0):
                raise BundleError(f"mixture prior: expected std > 0; got {float(self.std)}")
            if self.weights is not None:
                w = self.weights
                if w.shape != (k,) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
                    raise BundleError(f"mixture prior: expected {k} non-negative weights summing to 1; got {w}")

    @property
    def gaussian(self) -> bool:
        """True for the zero-centred normal prior (where slerp is the right interpolation)."""
        return self.kind == "normal"

    def draw(self, n: int, seed: int | None) -> np.ndarray:
        """n codes, (n, dim) float32."""
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.dim), dtype=np.float32)
        if self.kind == "normal":
            return z
        k = rng.choice(len(self.means), size=n, p=self.weights) if self.weights is not None \
            else rng.integers(len(self.means), size=n)
        return self.means[k] + self.std * z


def draw(latent: LatentSpec, n: int, seed: int | None) -> np.ndarray:
    """n codes from the manifest's prior, (n, dim) float32."""
    return Prior(latent).draw(n, seed)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between codes a and b (dim,) at fractions t (steps,) -> (steps, dim)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(np.clip(np.dot(a / na, b / nb), -1.0, 1.0)) if na > 0 and nb > 0 else 1.0
    omega = np.arccos(cos)
    if omega < 1e-6 or np.pi - omega < 1e-6:  # (anti)parallel: the great circle is undefined, go straight
        return ((1 - t)[:, None] * a + t[:, None] * b).astype(np.float32)
    out = (np.sin((1 - t) * omega)[:, None] * a + np.sin(t * omega)[:, None] * b) / np.sin(omega)
    return out.astype(np.float32)
