"""The quality metrics themselves, numpy only: likelihood bounds, Fréchet and kernel distances with their
standard errors, precision/recall, coverage.

Every function takes plain arrays, so the metrics are tested on their own properties (FID of a set
against itself is 0, KID of two halves of one set is 0 within its standard error, IWAE <= -ELBO,
K=1 IWAE = ELBO) without any model around them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bigmodel.errors import InputError

LOG_2PI = float(np.log(2 * np.pi))


def bce_per_image(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bernoulli negative log-likelihood of x in [0, 1] under logits, summed over pixels -> (B,) float64.

    The stable form of BCE-with-logits: max(l, 0) - x * l + log(1 + exp(-|l|)).
    """
    logits = logits.astype(np.float64)
    nll = np.maximum(logits, 0) - x * logits + np.log1p(np.exp(-np.abs(logits)))
    return nll.reshape(len(nll), -1).sum(1)


def sse_per_image(images: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Squared error summed over pixels -> (B,) float64."""
    d = images.astype(np.float64) - x
    return (d * d).reshape(len(d), -1).sum(1)


def _log_normal(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """log N(z | mu, exp(logvar)) summed over the last axis."""
    return -0.5 * (((z - mu) ** 2) * np.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def log_weights(x: np.ndarray, mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray,
                decode_logits: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """log p(x|z) + log p(z) - log q(z|x) at z = mu + exp(logvar / 2) * eps -> (B, K) float64.

    x: (B, C, H, W); mu, logvar: (B, D); eps: (K, B, D) standard-normal draws; decode_logits maps
    codes (N, D) float32 to Bernoulli logits (N, C, H, W).
    """
    k, b, d = eps.shape
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    z = mu64[None] + np.exp(0.5 * lv64)[None] * eps  # (K, B, D)
    logits = decode_logits(z.reshape(k * b, d).astype(np.float32))  # (K*B, C, H, W)
    log_px = -bce_per_image(logits, np.broadcast_to(x[None], (k, *x.shape)).reshape(k * b, *x.shape[1:]))
    log_pz = -0.5 * (z * z + LOG_2PI).sum(-1)  # (K, B)
    log_qz = _log_normal(z, mu64[None], lv64[None])
    return (log_px.reshape(k, b) + log_pz - log_qz).T  # (B, K)


def logmeanexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).mean(axis=axis, keepdims=True))).squeeze(axis)


def nll_bounds(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From log-weights (B, K): (-ELBO, importance-weighted NLL), each (B,) in nats.

    -ELBO is minus the mean log-weight; the IWAE estimate minus the log of the mean weight
    (Burda et al., 2016). By Jensen the second is never larger, and at K = 1 they are equal.
    """
    return -weights.mean(1), -logmeanexp(weights, 1)


def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise InputError(f"a Gaussian fit needs features (N >= 2, D); got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (N, D) and (M, D): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2).

    Tr((S_a S_b)^1/2) = sum of sqrt(eigenvalues of S_a^1/2 S_b S_a^1/2), a symmetric PSD matrix, so
    symmetric eigensolvers suffice (no scipy.linalg.sqrtm and its complex round-off).
    """
    if a.shape[1:] != b.shape[1:]:
        raise InputError(f"feature sets must have the same dimension; got {a.shape} and {b.shape}")
    mu_a, s_a = fit_gaussian(a)
    mu_b, s_b = fit_gaussian(b)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ s_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * cross, 0.0))


def fid_standard_error(a: np.ndarray, b: np.ndarray, resamples: int = 20, seed: int = 0) -> float:
    """Bootstrap standard error of `frechet_distance(a, b)`: the spread (sample standard deviation) of the FID
    over `resamples` draws of both sets with replacement, seeded.

    Both sides are redrawn, so the error covers other samples and another reference of the same sizes; two
    models scored against one fixed reference differ by less than their errors add up to.
    """
    if resamples < 2:
        raise InputError(f"a bootstrap needs at least 2 resamples; got {resamples}")
    rng = np.random.default_rng(seed)
    fids = [frechet_distance(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
            for _ in range(resamples)]
    return float(np.std(fids, ddof=1))


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / D + 1)^3 between the rows of a (N, D) and b (M, D) -> (N, M) float64."""
    return (a.astype(np.float64) @ b.astype(np.float64).T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased estimate of MMD^2 under `polynomial_kernel`: within-set means without the diagonal."""
    m, n = len(a), len(b)
    kaa, kbb = polynomial_kernel(a, a), polynomial_kernel(b, b)
    within_a = (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
    within_b = (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * polynomial_kernel(a, b).mean())


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 10, size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al., 2018) between feature sets (N, D) and (M, D) -> (mean, standard error).

    The unbiased MMD^2 with the cubic polynomial kernel (x . y / D + 1)^3, as torch-fidelity and clean-fid
    compute it, averaged over `subsets` random subsets of each set. The subsets are disjoint: a seeded
    permutation of each set cut into `subsets` blocks of min(size, len // subsets) rows, so the estimates
    are independent and the standard error is their sample standard deviation / sqrt(subsets) (not
    torch-fidelity's `kid_std`, the spread of one subset's estimate over overlapping subsets). Unbiased at
    any size: the same distribution gives 0 on average, and negative values are chance.
    """
    if a.ndim != 2 or a.shape[1:] != b.shape[1:]:
        raise InputError(f"feature sets must be (N, D) of the same D; got {a.shape} and {b.shape}")
    if subsets < 2 or min(len(a), len(b)) < 2 * subsets:
        raise InputError(f"KID over {subsets} disjoint subsets needs at least 2 subsets and {2 * subsets} "
                         f"features on each side; got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    pa, pb = rng.permutation(len(a)), rng.permutation(len(b))
    na, nb = min(size, len(a) // subsets), min(size, len(b) // subsets)
    est = [mmd2_unbiased(a[pa[i * na : (i + 1) * na]], b[pb[i * nb : (i + 1) * nb]]) for i in range(subsets)]
    return float(np.mean(est)), float(np.std(est, ddof=1) / np.sqrt(subsets))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (N, M) between rows, float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.maximum(d, 0)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row, (N,)."""
    if not 1 <= k < len(features):
        raise InputError(f"k must be between 1 and {len(features) - 1} for {len(features)} features; got {k}")
    d = _sq_dists(features, features)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of fake against real features.

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision: share of fake points inside the real manifold; recall: share of real
    points inside the fake manifold.
    """
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    d = _sq_dists(fake, real)  # (F, R)
    precision = float((d <= r_real[None]).any(1).mean())
    recall = float((d.T <= r_fake[None]).any(1).mean())
    return precision, recall


def class_coverage(predicted: np.ndarray, classes: int) -> np.ndarray:
    """Share of samples the classifier puts in each class, (classes,) summing to 1."""
    return np.bincount(np.asarray(predicted, dtype=np.int64), minlength=classes)[:classes] / max(len(predicted), 1)


def nearest(queries: np.ndarray, pool: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Index into pool (N, ...) of each query's nearest neighbour in pixel space (Euclidean), (Q,)."""
    q, p = queries.reshape(len(queries), -1), pool.reshape(len(pool), -1)
    return np.concatenate([_sq_dists(q[i : i + chunk], p).argmin(1) for i in range(0, len(q), chunk)])
