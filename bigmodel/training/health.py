"""Did the run learn anything? Plain checks after training, with the figures they compare.

A few dozen optimizer steps on a few hundred images leave a VAE whose codes carry nothing (KL
near 0, grey squares) or a GAN drawing noise, and the losses alone do not say so. Three checks,
each against the data itself: reconstructions against the mean training image, a VAE's KL, and
samples against the spread of real images.
"""

from __future__ import annotations

from typing import Any

import torch

RECON_MARGIN = 0.8  # reconstructions must have under this share of the mean image's squared error
KL_MIN = 1.0  # nats per image: a VAE's validation KL below this means the codes carry (almost) nothing
SPREAD_MIN = 0.25  # samples' pixel spread (within an image, across samples) under this share of the data's
SAMPLES = 64
SAMPLE_SEED = 2718


def squared_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the summed squared error per image; a (N, C, H, W), b (N, ...) or (C, H, W)."""
    return float(((a - b) ** 2).flatten(1).sum(1).mean())


@torch.no_grad()
def learning_report(model, train_x: torch.Tensor, val_x: torch.Tensor, val_losses: dict[str, float],
                    device: torch.device) -> dict[str, Any]:
    """{"figures": {...}, "warnings": [one line each]}: empty warnings when every check that applies passed.

    figures: recon_vs_mean (reconstruction error / the mean image's, on validation images), kl (a VAE's
    validation KL), sample_spread and sample_variety (the samples' pixel spread within an image and
    across samples, each as a share of the validation images').
    """
    model.eval()
    val = val_x.to(device)
    figures: dict[str, float] = {}
    warnings: list[str] = []
    mean_image = train_x.mean(0).to(device)  # (C, H, W)
    rec = model.reconstruct(val)
    if rec is not None:
        base = squared_error(val, mean_image)
        figures["recon_vs_mean"] = squared_error(val, rec) / base if base > 0 else float("nan")
        if not figures["recon_vs_mean"] < RECON_MARGIN:
            warnings.append(f"reconstructions are no better than the mean training image (squared error "
                            f"{figures['recon_vs_mean']:.2f}x the mean image's; a model that learned is under "
                            f"{RECON_MARGIN}x)")
    if "kl" in val_losses:
        figures["kl"] = float(val_losses["kl"])
        if figures["kl"] < KL_MIN:
            warnings.append(f"KL collapse: the codes carry almost nothing (validation KL {figures['kl']:.2f} nats "
                            f"per image, under {KL_MIN})")
    try:
        z = model.prior(SAMPLES, torch.Generator().manual_seed(SAMPLE_SEED)).to(device)
        samples = model.generate(z)
    except (TypeError, ValueError, RuntimeError):  # a model whose generator needs more than codes (labels)
        samples = None
    if samples is not None:
        within = float(samples.flatten(1).std(1).mean()) / max(float(val.flatten(1).std(1).mean()), 1e-12)
        across = float(samples.std(0).mean()) / max(float(val.std(0).mean()), 1e-12)
        figures["sample_spread"], figures["sample_variety"] = within, across
        if within < SPREAD_MIN:
            warnings.append(f"samples are near-constant images (pixel spread {within:.2f}x the data's, under "
                            f"{SPREAD_MIN}x)")
        elif across < SPREAD_MIN:
            warnings.append(f"samples are nearly all alike (spread across samples {across:.2f}x the data's, under "
                            f"{SPREAD_MIN}x)")
    model.train()
    return {"figures": figures, "warnings": warnings}
