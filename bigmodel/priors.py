"""The latent prior drawn with numpy's Generator: the same seed gives the same codes on every backend.

normal: z ~ N(0, I). mixture: a component k ~ Categorical(weights, default uniform), then
z = means[k] + std * N(0, I), with one `std` for all components or per-component diagonal `stds`
(K, dim). Codes are drawn on the host, never inside a graph, and shaped as the latent input takes
them: (n, *code_shape), e.g. a DCGAN generator's (n, 100, 1, 1). `fit_mixture` fits such a mixture
to codes with EM (how a plain autoencoder's bundle gets a prior it can sample). A conditional
model's class labels, when not given, are drawn uniformly (`draw_labels`).
"""

from __future__ import annotations

import numpy as np

from bigmodel.errors import BundleError, InputError
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
        self.shape = latent.code_shape  # one code's shape; the mixture's parameters are over the flat (dim,)
        if int(np.prod(self.shape)) != self.dim:
            raise BundleError(f"manifest latent.shape {list(self.shape)} holds {int(np.prod(self.shape))} values; "
                              f"latent.dim says {self.dim}")
        self.flat = self.shape == (self.dim,)
        self.means = self.std = self.weights = None
        if self.kind == "mixture":
            p = latent.params
            try:
                self.means = np.asarray(p["means"], dtype=np.float32)
                self.std = np.asarray(p["stds"] if "stds" in p else p["std"], dtype=np.float32)
                if self.means.ndim > 2 and self.means[0].size == self.dim:  # (K, *code_shape) -> (K, dim)
                    self.means = self.means.reshape(len(self.means), self.dim)
                if self.std.ndim > 2 and self.std.size == self.means.size:
                    self.std = self.std.reshape(self.means.shape)
                self.weights = None if p.get("weights") is None else np.asarray(p["weights"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise BundleError(f"mixture prior needs params means (components, {self.dim}) and std (or stds); "
                                  f"got {sorted(p)}: {e}") from e
            k = len(self.means)
            if self.means.ndim != 2 or self.means.shape[1] != self.dim or k < 1:
                raise BundleError(f"mixture prior: expected means of shape (components, {self.dim}); "
                                  f"got {self.means.shape}")
            good = np.isfinite(self.std).all() and (self.std > 0).all()
            if self.std.shape not in ((), self.means.shape) or not good:
                raise BundleError(f"mixture prior: expected std > 0, one number or stds of shape {self.means.shape}; "
                                  f"got shape {self.std.shape}, min {float(np.min(self.std))}")
            if self.weights is not None:
                w = self.weights
                if w.shape != (k,) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
                    raise BundleError(f"mixture prior: expected {k} non-negative weights summing to 1; got {w}")

    @property
    def gaussian(self) -> bool:
        """True for the zero-centred normal prior (where slerp is the right interpolation)."""
        return self.kind == "normal"

    def draw(self, n: int, seed: int | None) -> np.ndarray:
        """n codes, (n, *code_shape) float32 (the values drawn flat, (n, dim), then reshaped)."""
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.dim), dtype=np.float32)
        if self.kind != "normal":
            k = rng.choice(len(self.means), size=n, p=self.weights) if self.weights is not None \
                else rng.integers(len(self.means), size=n)
            z = self.means[k] + (self.std if self.std.ndim == 0 else self.std[k]) * z
        return z if self.flat else z.reshape(n, *self.shape)


def fit_mixture(codes: np.ndarray, components: int = 10, seed: int = 0, iters: int = 200,
                tol: float = 1e-5, min_var: float = 1e-4) -> dict:
    """A diagonal Gaussian mixture fitted to codes (N, dim) by EM -> {means, stds, weights, log_likelihood}.

    Means start at `components` distinct codes picked by a seeded Generator; variances are floored at
    `min_var` so a component never collapses onto one code. Stops when the mean log-likelihood
    gains less than `tol` (relative) or after `iters` rounds. numpy only: the runtime can refit.
    """
    x = np.asarray(codes, dtype=np.float64)
    if x.ndim != 2 or len(x) < components or not np.isfinite(x).all():
        raise InputError(f"fit_mixture needs finite codes (N >= {components}, dim); got shape {x.shape}")
    n, d = x.shape
    rng = np.random.default_rng(seed)
    means = x[rng.choice(n, size=components, replace=False)]  # (K, d)
    var = np.tile(np.maximum(x.var(0), min_var), (components, 1))  # (K, d)
    weights = np.full(components, 1.0 / components)
    xx = x * x  # (n, d)
    previous = -np.inf
    for _ in range(iters):
        # E step: log N(x | mean_k, var_k) + log w_k, (n, K); the squared distances expanded into two GEMMs
        inv = 1.0 / var  # (K, d)
        sq = np.maximum(xx @ inv.T - 2.0 * x @ (means * inv).T + (means * means * inv).sum(1)[None], 0.0)
        logp = -0.5 * (sq + np.log(var).sum(-1)[None] + d * np.log(2 * np.pi)) + np.log(weights)[None]
        top = logp.max(1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logp - top).sum(1))  # (n,)
        resp = np.exp(logp - lse[:, None])
        # M step
        nk = resp.sum(0) + 1e-12  # (K,)
        weights = nk / n
        means = resp.T @ x / nk[:, None]
        var = np.maximum(resp.T @ xx / nk[:, None] - means**2, min_var)
        ll = float(lse.mean())
        if ll - previous < tol * max(1.0, abs(ll)):
            break
        previous = ll
    weights = weights / weights.sum()
    return {"means": means.tolist(), "stds": np.sqrt(var).tolist(), "weights": weights.tolist(),
            "log_likelihood": ll}


def draw(latent: LatentSpec, n: int, seed: int | None) -> np.ndarray:
    """n codes from the manifest's prior, (n, *code_shape) float32."""
    return Prior(latent).draw(n, seed)


LABEL_STREAM = 1  # labels come from Generator([seed, 1]): the codes of the same seed stay what they were


def draw_labels(classes: int, n: int, seed: int | None) -> np.ndarray:
    """n class ids uniform over 0 .. classes-1, (n,) int64, from numpy's Generator([seed, 1])."""
    rng = np.random.default_rng(None if seed is None else [int(seed), LABEL_STREAM])
    return rng.integers(int(classes), size=int(n), dtype=np.int64)


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
