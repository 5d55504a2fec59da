"""Small datasets: defaults that scale with the data (said in a note), and a warning when a run learned nothing.

Real training on 100 and 300 of one's own images (mnist-5k digits saved as .npy) with every default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bigmodel.training.health import KL_MIN, RECON_MARGIN
from bigmodel.training.loop import MIN_BATCHES, MIN_STEPS, TrainSettings, fit_to_data, train


def test_defaults_scale_with_the_dataset():
    given = TrainSettings(epochs=20, batch_size=128)  # the VAE's defaults, resolved
    fitted, notes = fit_to_data(TrainSettings(), given, 90)
    assert fitted.batch_size == 90 // MIN_BATCHES and fitted.epochs == -(-MIN_STEPS // MIN_BATCHES)
    assert notes == [f"batch size 11: the default 128 would leave fewer than {MIN_BATCHES} batches an epoch of "
                     "the 90 training images",
                     "63 epochs (504 optimizer steps): the default 20 would make only 160 on 90 images"]
    assert fit_to_data(TrainSettings(), given, 4500) == (given, [])  # mnist-5k: 35 batches x 20 epochs
    # what the user gave is kept, however small the data
    asked = TrainSettings(epochs=2, batch_size=64)
    assert fit_to_data(asked, TrainSettings(epochs=2, batch_size=64), 90) == (TrainSettings(epochs=2, batch_size=64),
                                                                              [])
    # two ranks: each has half the images
    assert fit_to_data(TrainSettings(), given, 180, world=2)[0].batch_size == 11


@pytest.fixture(scope="module")
def own_images(tmp_path_factory, mnist5k):
    """own_images(n) -> an .npy of the first n mnist-5k training digits, uint8 (n, 28, 28)."""
    folder = tmp_path_factory.mktemp("own")

    def make(n: int) -> Path:
        path = folder / f"digits{n}.npy"
        np.save(path, (mnist5k.train[:n, 0] * 255).round().astype(np.uint8))
        return path
    return make


def check_learning(result) -> None:
    """Either it learned (every figure past its bar) or it warned, naming the figure that failed."""
    figures, warnings = result.learning["figures"], result.learning["warnings"]
    if "recon_vs_mean" in figures:
        learned = figures["recon_vs_mean"] < RECON_MARGIN
        assert learned != any("mean training image" in w for w in warnings), result.learning
    if "kl" in figures:
        assert (figures["kl"] < KL_MIN) == any("KL collapse" in w for w in warnings), result.learning


@pytest.mark.parametrize(("family", "n"), [("vae", 100), ("vae", 300), ("gan", 300)])
def test_own_small_dataset_trains_with_defaults(tmp_path, own_images, family, n):
    notes = []
    result = train(TrainSettings(family=family, dataset=str(own_images(n)), device="cpu", out=str(tmp_path / "run")),
                   progress=lambda p: notes.append(p.message) if p.stage == "train:note" else None)
    assert notes == result.notes and any("batch size" in m for m in notes) and any("epochs" in m for m in notes)
    train_images = n - n // 10  # the split keeps a tenth for validation
    batch = train_images // MIN_BATCHES
    assert len(result.history) * (train_images // batch) >= MIN_STEPS  # a few hundred optimizer steps happened
    check_learning(result)
    if family == "vae":  # the VAE learns from 90 digits in 500 steps: reconstructions well under the mean image
        assert result.learning["warnings"] == [], result.learning
        assert result.learning["figures"]["recon_vs_mean"] < RECON_MARGIN
    assert (tmp_path / "run" / "samples.png").is_file() and (tmp_path / "run" / "curves.png").is_file()


def test_a_run_that_learned_nothing_says_so(tmp_path, own_images):
    # one optimizer step on 90 images: the VAE has learned nothing yet
    result = train(TrainSettings(family="vae", dataset=str(own_images(100)), device="cpu", epochs=1, batch_size=90,
                                 out=str(tmp_path / "run")))
    check_learning(result)
    warnings = result.learning["warnings"]
    assert any("no better than the mean training image" in w for w in warnings), result.learning
