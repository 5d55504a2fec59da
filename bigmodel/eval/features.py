"""The feature net for FID, precision/recall and class coverage: a small classifier trained on the dataset.

Trained offline on the dataset's own training split (no downloaded weights), once per dataset:
the weights are cached under the cache folder by a hash of the training images, labels and net
settings, and loaded back with `torch.load(weights_only=True)`. Its validation accuracy is part
of every report: features from a classifier that cannot tell the classes apart measure little.
Two architectures: `conv` (eval's default) and `deep`, a second opinion of another design that
benchmarks/quality_vs_peers.py trains from another seed to check that rankings do not hang on one net.
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
DEEP_FEATURES = 256
NET_VERSION = 1  # bump when the net or its training changes: old cache entries are then ignored
ARCHS = ("conv", "deep")


@dataclass(frozen=True)
class ClassifierSettings:
    epochs: int = 10
    width: int = 32
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    arch: str = "conv"  # one of ARCHS


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


class DeepFeatureNet(FeatureNet):
    """Images (B, C, H, W) -> features (B, 256) -> class logits: three 5x5/5x5/3x3 conv blocks with batch norm,
    a design unlike `FeatureNet`'s, so the two nets' agreement says something about the samples."""

    def __init__(self, channels: int, classes: int, width: int):
        nn.Module.__init__(self)

        def block(cin, cout, k):
            return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]

        self.trunk = nn.Sequential(
            *block(channels, width, 5), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            *block(width, 2 * width, 5), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            *block(2 * width, 4 * width, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(),  # (B, 4w * 4)
            nn.Linear(4 * width * 4, DEEP_FEATURES), nn.ReLU(),  # (B, 256): the features
        )
        self.head = nn.Linear(DEEP_FEATURES, classes)


NETS = {"conv": FeatureNet, "deep": DeepFeatureNet}


@dataclass
class Classifier:
    net: FeatureNet
    classes: int
    accuracy: float  # on the validation split
    path: Path  # the cache file
    cached: bool  # loaded rather than trained

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D) float64, predicted class (N,)) of images (N, C, H, W) in [0, 1]; D: 128 conv, 256 deep."""
        feats, preds = [], []
        for i in range(0, len(images), batch):
            h = self.net.trunk(torch.from_numpy(np.ascontiguousarray(images[i : i + batch], dtype=np.float32)))
            feats.append(h.double().numpy())
            preds.append(self.net.head(h).argmax(1).numpy())
        return np.concatenate(feats), np.concatenate(preds)


def cache_key(train: np.ndarray, labels: np.ndarray, settings: ClassifierSettings) -> str:
    h = hashlib.sha256()
    # the default arch is left out of the text, so caches from before `arch` existed stay valid
    text = str(settings).replace(", arch='conv'", "")
    h.update(f"{NET_VERSION}|{train.shape}|{text}".encode())
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
    if settings.arch not in NETS:
        raise InputError(f"feature net arch must be one of {', '.join(ARCHS)}; got {settings.arch!r}")
    if len(train) != len(train_y) or len(val) != len(val_y):
        raise InputError(f"images and labels differ in number: {len(train)}/{len(train_y)} train, "
                         f"{len(val)}/{len(val_y)} val")
    classes = int(max(train_y.max(), val_y.max())) + 1
    path = Path(cache_dir or default_cache_dir()) / f"classifier-{cache_key(train, train_y, settings)}.pt"
    net = NETS[settings.arch](train.shape[1], classes, settings.width)
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
