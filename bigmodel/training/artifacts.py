"""Pictures a run leaves behind: samples.png, reconstructions.png, curves.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel.fileio import atomic_write_bytes
from bigmodel.images import line_chart, save_grid

SAMPLE_SEED = 1234  # fixed so successive epochs' sample grids are comparable


@torch.no_grad()
def write_pictures(model, val: torch.Tensor, out: Path, device: torch.device) -> None:
    """8x8 grid from the prior/generator; for encoding families, 4 pairs of rows: inputs above outputs."""
    model.eval()
    z = model.prior(64, torch.Generator().manual_seed(SAMPLE_SEED)).to(device)
    save_grid(out / "samples.png", model.generate(z).cpu().numpy())
    x = val[:32].to(device)
    recon = model.reconstruct(x)
    if recon is not None:
        pairs = [t for i in range(0, len(x), 8) for t in (x[i : i + 8], recon[i : i + 8])]
        save_grid(out / "reconstructions.png", torch.cat(pairs).cpu().numpy())


def write_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """One panel per loss term: train and validation against epoch."""
    panels = {key: {split: [(h["epoch"], h[split].get(key, np.nan)) for h in history] for split in ("train", "val")}
              for key in history[-1]["train"]}
    atomic_write_bytes(path, line_chart(panels))
