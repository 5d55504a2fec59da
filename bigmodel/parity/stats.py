"""Statistics of one output against its reference, in float64, and the verdict with the worst element."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bigmodel.parity.tolerances import REL_EPS, Tolerance


@dataclass
class Failure:
    """One statistic outside its tolerance, with the element that shows it."""

    statistic: str
    value: float
    limit: float
    index: tuple[int, ...]
    got: float
    want: float
    note: str = ""
    unit: str = ""  # "probability" when logits were compared as sigmoid(logit)

    def describe(self) -> str:
        if self.note:
            return f"{self.statistic}: {self.note}"
        if self.statistic == "abs_error":
            rule = f"|got - want| = {self.value:.3g} > atol + rtol·|want| = {self.limit:.3g}"
        elif self.statistic in ("nonfinite", "uint8_changed"):
            rule = f"{self.statistic} = {self.value:.4g} > allowed {self.limit:.4g}"
        else:
            rule = f"{self.statistic} = {self.value:.6g} < required {self.limit:.6g}"
        unit = f" (as {self.unit})" if self.unit else ""
        return f"{rule}; worst element at index {self.index}: got {self.got:.6g}, want {self.want:.6g}{unit}"


@dataclass
class OutputCheck:
    output: str
    kind: str
    stats: dict[str, float]
    worst_index: tuple[int, ...]
    worst_got: float
    worst_want: float
    failures: list[Failure] = field(default_factory=list)
    used: float = 0.0  # share of the tolerance used by the worst statistic: <= 1 passes (see `tolerance_used`)

    @property
    def passed(self) -> bool:
        return not self.failures


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow, in float64."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def compare(got: np.ndarray, want: np.ndarray, kind: str, tol: Tolerance,
            value_range: tuple[float, float] = (0.0, 1.0), output: str = "") -> OutputCheck:
    """Statistics of `got` against the reference `want` (both (B, ...)), in float64, and the verdict.

    Logits are compared as probabilities (sigmoid) where `tol.probability` is set -- an image role's
    pixel logits (`image_logit`) then as the image they make, with the image statistics; image
    tolerances are fractions of the data range; codes (latent, stat) also by relative error per sample.
    """
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        nan = float("nan")
        f = Failure("shape", nan, nan, (), nan, nan, note=f"got {tuple(g.shape)}, want {tuple(w.shape)}")
        return OutputCheck(output, kind, {}, (), nan, nan, [f], float("inf"))
    unit, named = "", kind  # `named`: the output's kind as the manifest says, for the report
    centre = 0.0  # what a logit's sign is measured from
    if kind in ("logit", "image_logit") and tol.probability:
        g, w, unit, centre = sigmoid(g), sigmoid(w), "probability", 0.5
        if kind == "image_logit":  # Bernoulli pixel probabilities: an image in [0, 1]
            kind, value_range, centre = "image", (0.0, 1.0), 0.0
    lo, hi = value_range
    atol = tol.atol * (hi - lo) if kind == "image" else tol.atol
    diff = np.abs(g - w)
    finite = np.isfinite(g)
    diff = np.where(finite, diff, np.inf)
    allowed = atol + tol.rtol * np.abs(w)
    ratio = diff / np.maximum(allowed, np.finfo(np.float64).tiny)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)

    def at(idx) -> tuple[tuple[int, ...], float, float]:
        return tuple(int(i) for i in idx), float(g[idx]), float(w[idx])

    def fail(statistic: str, value: float, limit: float, idx) -> None:
        failures.append(Failure(statistic, value, limit, *at(idx), unit=unit))

    g0 = np.where(finite, g, 0.0)
    flat_g, flat_w = g0.reshape(len(g), -1), w.reshape(len(w), -1)
    # cosine per sample; for one-number outputs (logits) over the batch: per sample it is only a sign.
    # A single number (one logit, batch 1) has no direction beyond its sign: sign agreement judges it.
    # Probabilities are all positive: their cosine is taken about 0.5, the decision boundary.
    rows = len(g) if flat_w.shape[1] > 1 else 1
    cosines = _cosine_rows((g0 - centre).reshape(rows, -1), (w - centre).reshape(rows, -1))
    rel_rows = np.linalg.norm(flat_g - flat_w, axis=1) / (np.linalg.norm(flat_w, axis=1) + REL_EPS)
    stats = {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float((diff / (np.abs(w) + REL_EPS)).max()),
        "rel_norm": float(np.where(finite.reshape(len(g), -1).all(1), rel_rows, np.inf).max()),
        "cosine": float(cosines.min()),
        "nonfinite": float(np.size(g) - finite.sum()),
    }
    used = {"abs_error": float(ratio[worst])}
    failures: list[Failure] = []
    if stats["nonfinite"]:
        used["nonfinite"] = float("inf")
        fail("nonfinite", stats["nonfinite"], 0.0, np.unravel_index(int(np.argmin(finite)), g.shape))
    if ratio[worst] > 1.0:
        failures.append(Failure("abs_error", float(diff[worst]), float(allowed[worst]), *at(worst), unit=unit))
    if w.size > 1:
        used["cosine"] = _share(1.0 - stats["cosine"], 1.0 - tol.min_cosine)
        if stats["cosine"] < tol.min_cosine:
            fail("cosine", stats["cosine"], tol.min_cosine, _worst_in_row(ratio, cosines) if rows > 1 else worst)
    if tol.max_rel_norm is not None and kind in ("latent", "stat"):
        used["rel_norm"] = _share(stats["rel_norm"], tol.max_rel_norm)
        if stats["rel_norm"] > tol.max_rel_norm:
            failures.append(Failure("rel_norm", stats["rel_norm"], tol.max_rel_norm,
                                    *at(_worst_in_row(ratio, -rel_rows))))
    if kind == "image":
        mse = np.where(finite, (g - w) ** 2, np.inf).reshape(len(g), -1).mean(1)
        with np.errstate(divide="ignore"):
            psnr = 10 * np.log10((hi - lo) ** 2 / mse)
        stats["psnr"] = float(psnr.min())
        stats["uint8_changed"] = float(np.mean(_uint8(flat_g, lo, hi) != _uint8(flat_w, lo, hi)))
        if tol.min_psnr is not None:
            used["psnr"] = float(10 ** ((tol.min_psnr - stats["psnr"]) / 20))  # rms error / allowed rms error
            if stats["psnr"] < tol.min_psnr:
                fail("psnr", stats["psnr"], tol.min_psnr, _worst_in_row(ratio, psnr))
        if tol.max_uint8_changed is not None:
            used["uint8_changed"] = _share(stats["uint8_changed"], tol.max_uint8_changed)
            if stats["uint8_changed"] > tol.max_uint8_changed:
                fail("uint8_changed", stats["uint8_changed"], tol.max_uint8_changed, worst)
    if kind == "logit":
        # A reference within atol of the decision boundary has no reliable sign: it counts as agreeing.
        agree = (np.sign(g - centre) == np.sign(w - centre)) | (np.abs(w - centre) <= tol.atol)
        stats["sign_agreement"] = float(agree.mean())
        if tol.min_sign_agreement is not None:
            used["sign_agreement"] = _share(1.0 - stats["sign_agreement"], 1.0 - tol.min_sign_agreement)
            if stats["sign_agreement"] < tol.min_sign_agreement:
                flip = np.unravel_index(int(np.argmin(np.where(agree, np.inf, -np.abs(w - centre)))), w.shape)
                fail("sign_agreement", stats["sign_agreement"], tol.min_sign_agreement, flip)
    return OutputCheck(output, named, stats, *at(worst), failures, max(used.values()))


def _share(value: float, limit: float) -> float:
    """value / limit, with a zero limit meaning "none allowed": 0 if value is 0, else inf."""
    if limit > 0:
        return float(value / limit)
    return 0.0 if value <= 0 else float("inf")


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) per row: 1 when both rows are zero, 0 when only one is."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip(dot / (na * nb), -1.0, 1.0)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))


def _worst_in_row(ratio: np.ndarray, per_row: np.ndarray) -> tuple[int, ...]:
    """The worst element of the sample whose per-sample statistic is lowest."""
    row = int(np.argmin(per_row))
    return (row, *np.unravel_index(int(np.argmax(ratio[row])), ratio.shape[1:]))


def _uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.round(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
