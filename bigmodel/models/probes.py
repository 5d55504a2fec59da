"""Inputs that exercise a role graph: real images, prior samples, and latents out to ±4σ.

Export's built-in check, `bigmodel parity` and int8 calibration all draw from here, so what
"verified" means is defined once. Everything is drawn from a seeded `numpy.random.Generator`:
float32 images and codes, int64 class labels.
"""

from __future__ import annotations

import numpy as np

from bigmodel.manifest import BATCH, LatentSpec, TensorSpec

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


# the two probe sets of a role, by the kind of its first image or latent input: (in distribution, stress)
SET_NAMES = {"image": ("val", "noise"), "latent": ("prior", "extreme")}
OTHER_SETS = ("normal",)  # a role with neither: one set, standard normal inputs


def main_input(inputs: list[TensorSpec]) -> TensorSpec:
    """The input that names a role's probe sets: its first image or latent input, else its first."""
    return next((t for t in inputs if t.kind in SET_NAMES), inputs[0])


def input_probes(inputs: list[TensorSpec], latent: LatentSpec, value_range: tuple[float, float],
                 val: np.ndarray | None, n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Probe set name -> {input name: (n, ...) array} for a role with these inputs, in the manifest's order.

    The sets are named by the role's first image or latent input: images "val" (a seeded pick of
    `val`, or without `val` no such set) and "noise" (uniform in the image's range), codes "prior"
    and "extreme" (±4σ) in their declared shape (the image role's: `latent.code_shape`); a role
    with neither has one set, "normal". Every other input gets its own values in each set:
    images and codes as above, class labels seeded uniform ids in [0, classes) (int64), tensor and
    stat inputs standard normal. One image or one latent input gives exactly `role_probes`' arrays.
    A set whose first input has fewer rows (val holds fewer than n images) cuts the others to match.
    """
    main = main_input(inputs)
    names = SET_NAMES.get(main.kind, OTHER_SETS)
    order = [main] + [t for t in inputs if t is not main]
    sets: dict[str, dict[str, np.ndarray]] = {}
    for i, t in enumerate(order):
        inside, stress = _probe_values(t, latent, value_range, val, n, seed if i == 0 else [seed, i])
        if inside is None and i:
            inside = stress  # an image input besides the first, without images of its shape: noise in both sets
        for name, x in zip(names, (inside, stress), strict=False):  # OTHER_SETS: the first only
            if x is not None and (i == 0 or name in sets):  # no validation images: no "val" set
                sets.setdefault(name, {})[t.name] = x
    for name, feeds in sets.items():  # rows of the first input; feeds in the manifest's input order
        rows = len(feeds[order[0].name])
        sets[name] = {t.name: feeds[t.name][:rows] for t in inputs}
    return sets


def _probe_values(t: TensorSpec, latent: LatentSpec, value_range: tuple[float, float], val: np.ndarray | None,
                  n: int, seed) -> tuple[np.ndarray | None, np.ndarray]:
    """(in-distribution, stress) values of one input, (n, ...) each; None: no validation images of its shape."""
    tail = tuple(int(d) for d in t.shape if d != BATCH)
    if t.kind == "label":
        rng = np.random.default_rng(seed)
        classes = int(t.classes or 1)
        return rng.integers(classes, size=n, dtype=np.int64), rng.integers(classes, size=n, dtype=np.int64)
    if t.kind == "image":
        lo, hi = (float(v) for v in t.range) if t.range else value_range
        if val is not None and tuple(val.shape[1:]) == tail:
            sets = image_probes(val, n, seed)
            return rescale(sets["val"], value_range, (lo, hi)), rescale(sets["noise"], (0.0, 1.0), (lo, hi))
        noise = np.random.default_rng(seed).random((n, *tail), dtype=np.float32)
        return None, rescale(noise, (0.0, 1.0), (lo, hi))
    if t.kind == "latent":
        sets = latent_probes(int(np.prod(tail)), n, seed)
        return sets["prior"].reshape(n, *tail), sets["extreme"].reshape(n, *tail)
    rng = np.random.default_rng(seed)  # tensor, stat, logit: standard normal, another draw per set
    return rng.standard_normal((n, *tail), dtype=np.float32), rng.standard_normal((n, *tail), dtype=np.float32)


def rescale(x: np.ndarray, frm: tuple[float, float], to: tuple[float, float]) -> np.ndarray:
    """Values in range `frm` mapped linearly onto `to` (x itself when the two are the same), float32."""
    if tuple(frm) == tuple(to):
        return x
    return (to[0] + (x - frm[0]) * ((to[1] - to[0]) / (frm[1] - frm[0]))).astype(np.float32)
