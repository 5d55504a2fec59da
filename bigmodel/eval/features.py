"""The feature net for FID, precision/recall and class coverage: a small classifier trained on the dataset.

Trained offline on the dataset's own training split (no downloaded weights), once per dataset:
the weights are cached under the cache folder by a hash of the training images, labels and net
settings, and loaded back with `torch.load(weights_only=True)`. Its validation accuracy is part
of every report: features from a classifier that cannot tell the classes apart measure little.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigmodel.errors import InputError
from bigmodel.fileio import atomic_write

FEATURES = 128
NET_VERSION = 1  # bump when the net or its training changes: old cache entries are then ignored


@dataclass(frozen=True)
class ClassifierSettings:
    epochs: int = 10
    width: int = 32
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0


class FeatureNet(nn.Module):
    """Images (B, C, H, W) -> features (B, 128) -> class logits; any size from 8x8 up."""

    def __init__(self, channels: int, classes: int, width: int):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # (B, 2w * 16)
            nn.Linear(2 * width * 16, FEATURES), nn.ReLU(),  # (B, 128): the features
        )
        self.head = nn.Linear(FEATURES, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


@dataclass
class Classifier:
    net: FeatureNet
    classes: int
    accuracy: float  # on the validation split
    path: Path  # the cache file
    cached: bool  # loaded rather than trained

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, 128) float64, predicted class (N,)) of images (N, C, H, W) in [0, 1]."""
        feats, preds = [], []
        for i in range(0, len(images), batch):
            h = self.net.trunk(torch.from_numpy(np.ascontiguousarray(images[i : i + batch], dtype=np.float32)))
            feats.append(h.double().numpy())
            preds.append(self.net.head(h).argmax(1).numpy())
        return np.concatenate(feats), np.concatenate(preds)


def cache_key(train: np.ndarray, labels: np.ndarray, settings: ClassifierSettings) -> str:
    h = hashlib.sha256()
    h.update(f"{NET_VERSION}|{train.shape}|{settings}".encode())
    h.update(np.ascontiguousarray(train, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    """$BIGMODEL_CACHE/eval, else ~/.cache/bigmodel/eval (XDG_CACHE_HOME honoured)."""
    from bigmodel.runtime.backends.ort_options import cache_dir

    return cache_dir() / "eval"


def get_classifier(train: np.ndarray, train_y: np.ndarray, val: np.ndarray, val_y: np.ndarray,
                   cache_dir: Path | None = None, settings: ClassifierSettings | None = None) -> Classifier:
    """The cached classifier for this training split, trained (and cached) on first use."""
    settings = settings or ClassifierSettings()
    if len(train) != len(train_y) or len(val) != len(val_y):
        raise InputError(f"images and labels differ in number: {len(train)}/{len(train_y)} train, "
                         f"{len(val)}/{len(val_y)} val")
    classes = int(max(train_y.max(), val_y.max())) + 1
    path = Path(cache_dir or default_cache_dir()) / f"classifier-{cache_key(train, train_y, settings)}.pt"
    net = FeatureNet(train.shape[1], classes, settings.width)
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state["state_dict"])
            return Classifier(net.eval(), classes, float(state["accuracy"]), path, cached=True)
        except Exception:  # a truncated or foreign cache file: train afresh and overwrite it
            pass
    _fit(net, train, train_y, settings)
    net.eval()
    clf = Classifier(net, classes, 0.0, path, cached=False)
    clf.accuracy = float((clf.features(val)[1] == val_y).mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"state_dict": net.state_dict(), "accuracy": clf.accuracy}, tmp))
    return clf


def _fit(net: FeatureNet, x: np.ndarray, y: np.ndarray, s: ClassifierSettings) -> None:
    """Plain cross-entropy training with Adam; deterministic for a seed (own generators)."""
    g = torch.Generator().manual_seed(s.seed)
    with torch.random.fork_rng():
        torch.manual_seed(s.seed)
        for m in net.modules():  # re-initialise from the seed: the same data gives the same net
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    net.train()
    for _ in range(s.epochs):
        order = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), s.batch_size):
            idx = order[i : i + s.batch_size]
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
