"""Tolerances: one table, per precision (fp32, fp16, int8) and per kind of output, each value explained."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bigmodel.errors import InputError

REL_EPS = 1e-6  # max relative error = max(|got - want| / (|want| + REL_EPS)); keeps a zero reference finite
STRESS_PROBES = ("extreme", "noise")  # ±4σ codes and uniform-noise images: outside any calibration range


@dataclass(frozen=True)
class Tolerance:
    """Pass rule for one kind of output at one precision.

    Element-wise (numpy.allclose style): every |got - want| <= atol + rtol * |want|. Plus floors on
    whole-output statistics: cosine (min over samples; over the batch for one-number outputs such as
    logits; a lone number is judged by its sign alone), PSNR over the
    data range (images, min over samples), the share of pixels whose uint8 value changes (images)
    and logit sign agreement. `stress`, when set, is the rule on `STRESS_PROBES` inputs instead.
    """

    atol: float
    rtol: float
    min_cosine: float
    min_psnr: float | None = None
    max_uint8_changed: float | None = None
    min_sign_agreement: float | None = None
    max_rel_norm: float | None = None  # codes: ||got - want|| / ||want|| per sample
    probability: bool = False  # logits: compared as sigmoid(logit); atol is then in probability units
    stress: Tolerance | None = None


# Every threshold parity applies, in one place. Kinds are the manifest's: image (decoder/generator
# outputs, sigmoid in the data range), latent (codes, roughly N(0, 1), tails to ~±5), stat (a VAE's
# logvar, a few units), logit (discriminator scores, unbounded, typically |x| < 20). "Measured" figures
# are ort-cpu against PyTorch over all 8 family/arch pairs (1-epoch runs, every probe set).
# How each kind is compared (the same at every precision, so one reading of every figure):
# - images: atol is a fraction of the data range (hi - lo), PSNR is over the data range.
# - codes and logvar (latent, stat): element-wise atol + rtol, cosine per sample, and from fp16 on
#   the relative error per sample, ||got - want|| / ||want|| (`max_rel_norm`): a code is a vector.
# - an image role's pixel logits (image_logit; a decoder's Bernoulli logits, for likelihoods): at
#   fp32 as raw values (the logit rule without a sign rule: a pixel's side of 0.5 is no decision);
#   at fp16/int8 as the pixel probabilities they stand for, sigmoid(logit), under the image rule --
#   the same bar as the image itself, which is sigmoid of the same numbers.
# - logits at fp16/int8: as probabilities, sigmoid(logit) (`probability`): what a discriminator
#   answers is p(real); fp32 -44 and int8 -4.6 on a noise image both say p ~ 0, while 0.3 against
#   -0.7 near the boundary changes the answer. atol is then in probability units, set to the old
#   logit atol times sigmoid's largest slope (1/4): the same bar at the decision boundary, looser
#   only where the probability is saturated; rtol 0 (a relative error of a probability near 0 says
#   nothing); cosine over the batch about p = 0.5; sign agreement as before (p > 0.5 or not).
#   fp32 keeps raw logits: there the check is "the same function", and 1e-5 on the logit is stricter.
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    # fp32: the graph computes the same float32 function with other kernels (GEMM blocking, fused
    # ops, summation order). float32 rounds at 2^-24 ~ 6e-8 relative; a dot product of K ~ 800 terms
    # reordered drifts by ~sqrt(K) ulps of its largest partial sums, i.e. 1e-6..1e-5 relative on
    # pre-activations. 1e-5 absolute on [0, 1] images is export's own check (FP32_ATOL). Measured:
    # images <= 5e-7, codes <= 3.4e-6, logits <= 1.1e-6 max abs; 1 - cosine ~1e-14; PSNR > 140 dB.
    # rtol 1e-5 lets large codes and logits (|x| ~ 10-50 after long training) drift by their ulps.
    # 90 dB is 3e-5 rms. A pixel moves a uint8 level only when a ~1e-7 error straddles a rounding
    # boundary: ~0.01% of pixels; 1% allowed.
    "fp32": {
        "image": Tolerance(atol=1e-5, rtol=0.0, min_cosine=0.99999, min_psnr=90.0, max_uint8_changed=0.01),
        "latent": Tolerance(atol=1e-5, rtol=1e-5, min_cosine=0.99999),
        "stat": Tolerance(atol=1e-5, rtol=1e-5, min_cosine=0.99999),
        "logit": Tolerance(atol=1e-5, rtol=1e-5, min_cosine=0.99999, min_sign_agreement=1.0),
    },
    # fp16: a 10-bit mantissa rounds at 2^-11 ~ 4.9e-4 relative per operation, on weights, inputs and
    # every activation; errors add up through ~3-5 layers and 800-term sums to ~1e-2 relative on
    # pre-activations (worst with fp16 accumulation, as TensorRT may choose), more at ±4σ codes,
    # where activations are largest -- so ±4σ gets no looser rule: that is where fp16 overflows.
    # Sigmoid (slope <= 1/4) shrinks errors on images: 1e-2 absolute is 2.5 uint8 levels; 40 dB is
    # 1% rms. Codes: 2e-2 absolute + 2e-2 relative per element; per sample a relative error of 0.05
    # (cosine 0.999 alone allows 0.045 by direction). Up to half the pixels may move one uint8 level.
    # Logits as probabilities: 2e-2 (logit) x 1/4 = 5e-3; within it of 0.5 a reference carries no
    # sign; elsewhere 1 in 100 may flip. Measured (ort fp16 graphs, fragile ops kept in fp32): images
    # <= 7e-4 (> 77 dB), codes <= 2e-3, logits <= 4e-4.
    "fp16": {
        "image": Tolerance(atol=1e-2, rtol=0.0, min_cosine=0.999, min_psnr=40.0, max_uint8_changed=0.5),
        "latent": Tolerance(atol=2e-2, rtol=2e-2, min_cosine=0.999, max_rel_norm=0.05),
        "stat": Tolerance(atol=2e-2, rtol=2e-2, min_cosine=0.999, max_rel_norm=0.05),
        "logit": Tolerance(atol=5e-3, rtol=0.0, min_cosine=0.999, min_sign_agreement=0.99, probability=True),
    },
    # int8: weights and activations are rounded to 1 of 255 levels of their calibrated range: a step
    # of 1/127 of the range, rms step/sqrt(12) ~ 0.2% of range per tensor, ~0.5-1% after 3-5
    # layers, i.e. 40-45 dB; in-distribution inputs (validation and generated images, prior samples)
    # must reach 30 dB (3% rms) and 0.99 cosine, with single pixels off by up to 0.1 (25 uint8
    # levels). Codes: per sample a relative error of 0.15 (cosine 0.99 alone allows 0.141). Measured
    # in-distribution on good bundles: images <= 0.018 max abs, > 48 dB; codes <= 0.03.
    # Stress inputs (±4σ codes, noise images) drive activations past the calibrated range, where int8
    # clips: error is set by how far past, not by the step. There the check is direction, not
    # closeness: cosine >= 0.9 (images, logits) / 0.95 (codes; relative error 0.35, cosine alone
    # allows 0.32), PSNR >= 15 dB (18% rms), elements within 0.5 (+25% on codes). Logits as
    # probabilities: 0.25 (logit) x 1/4 = 0.0625 in distribution, 1.0 x 1/4 = 0.25 on stress, where a
    # clipped logit keeps its side of 0.5 (80%) but not its size. Measured on stress: images <= 0.47
    # max abs, cosine >= 0.946, >= 19.6 dB.
    "int8": {
        "image": Tolerance(atol=0.1, rtol=0.0, min_cosine=0.99, min_psnr=30.0,
                           stress=Tolerance(atol=0.5, rtol=0.0, min_cosine=0.9, min_psnr=15.0)),
        "latent": Tolerance(atol=0.25, rtol=0.1, min_cosine=0.99, max_rel_norm=0.15,
                            stress=Tolerance(atol=0.5, rtol=0.25, min_cosine=0.95, max_rel_norm=0.35)),
        "stat": Tolerance(atol=0.25, rtol=0.1, min_cosine=0.99, max_rel_norm=0.15,
                          stress=Tolerance(atol=0.5, rtol=0.25, min_cosine=0.95, max_rel_norm=0.35)),
        "logit": Tolerance(atol=0.0625, rtol=0.0, min_cosine=0.99, min_sign_agreement=0.95, probability=True,
                           stress=Tolerance(atol=0.25, rtol=0.0, min_cosine=0.9, min_sign_agreement=0.8,
                                            probability=True)),
    },
}


def _as_probabilities(t: Tolerance) -> Tolerance:
    return replace(t, probability=True, stress=t.stress and _as_probabilities(t.stress))


TOLERANCES["fp32"]["image_logit"] = Tolerance(atol=1e-5, rtol=1e-5, min_cosine=0.99999)  # raw, as "logit"
for _precision in ("fp16", "int8"):
    TOLERANCES[_precision]["image_logit"] = _as_probabilities(TOLERANCES[_precision]["image"])
PRECISIONS = tuple(TOLERANCES)
# "tf32": an fp32 bundle run with TF32 allowed (load(..., tf32=True)): MatMul/Conv inputs rounded to
# fp16's 10-bit mantissa, sums kept in fp32, so errors of fp16's order on the GPU: fp16's rules.
SAME_RULES = {"tf32": "fp16", "bf16": "fp16"}  # bf16 keeps fp32 accumulation: held to the fp16 rules


def tolerances_for(precision: str, atol: float | None = None, rtol: float | None = None) -> dict[str, Tolerance]:
    """The table row for `precision`, with atol/rtol overridden for every kind when given."""
    if precision not in TOLERANCES and precision not in SAME_RULES:
        raise InputError(f"--tolerances must be one of {', '.join((*PRECISIONS, *SAME_RULES))}; got {precision!r}")
    for name, v in (("atol", atol), ("rtol", rtol)):
        if v is not None and not (v >= 0 and math.isfinite(v)):
            raise InputError(f"--{name} must be a finite number >= 0; got {v!r}")
    over = {k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None}

    def apply(t: Tolerance) -> Tolerance:
        return replace(t, **over, stress=apply(t.stress) if t.stress else None)

    return {kind: apply(t) for kind, t in TOLERANCES[SAME_RULES.get(precision, precision)].items()}


def rule(tolerances: dict[str, Tolerance], kind: str, probe: str) -> Tolerance:
    """The rule for an output of `kind` on probe set `probe` (a kind the table lacks: the latent row)."""
    t = tolerances.get(kind, tolerances["latent"])
    return t.stress if probe in STRESS_PROBES and t.stress is not None else t
