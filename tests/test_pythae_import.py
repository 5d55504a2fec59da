"""`bigmodel export PYTHAE_MODEL_FOLDER`: models trained by pythae's own trainer, exported and checked by parity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pythae = pytest.importorskip("pythae", reason="the pythae extra is not installed")


def _bigmodel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigmodel", *args], capture_output=True, text=True, timeout=600)


def _train(kind: str, out: Path, mnist5k, custom: bool = False) -> Path:
    from pythae.models import VAE, Adversarial_AE, Adversarial_AE_Config, BetaVAE, BetaVAEConfig, VAEConfig
    from pythae.models.nn.default_architectures import Encoder_VAE_MLP
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import AdversarialTrainerConfig, BaseTrainerConfig

    torch.manual_seed(0)
    common = {"output_dir": str(out), "num_epochs": 1, "per_device_train_batch_size": 50, "no_cuda": True}
    shape = {"input_dim": (1, 28, 28), "latent_dim": 8, "reconstruction_loss": "bce"}
    if kind == "aae":
        model, config = Adversarial_AE(Adversarial_AE_Config(**shape)), AdversarialTrainerConfig(**common)
    else:
        cfg = BetaVAEConfig(beta=4.0, **shape) if kind == "beta" else VAEConfig(**shape)
        enc = Encoder_VAE_MLP(cfg) if custom else None  # given by hand: pythae saves it as encoder.pkl
        model = (BetaVAE if kind == "beta" else VAE)(cfg, encoder=enc)
        config = BaseTrainerConfig(**common)
    TrainingPipeline(model=model, training_config=config)(train_data=mnist5k.train[:200], eval_data=None)
    return next(out.glob("*/final_model"))


@pytest.mark.parametrize("kind", ["vae", "beta", "aae"])
def test_pythae_folder_exports_and_passes_parity(kind, tmp_path, mnist5k):
    folder = _train(kind, tmp_path / "pythae", mnist5k)
    r = _bigmodel("export", str(folder), "--data", "mnist-5k", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _bigmodel("parity", str(tmp_path / "b"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_custom_nets_refused_without_trust(tmp_path, mnist5k):
    folder = _train("vae", tmp_path / "pythae", mnist5k, custom=True)
    assert (folder / "encoder.pkl").is_file()
    r = _bigmodel("export", str(folder), "--data", "mnist-5k", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--trust-pickles" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "b").exists()
    r = _bigmodel("export", str(folder), "--data", "mnist-5k", "--out", str(tmp_path / "b"), "--trust-pickles")
    assert r.returncode == 0, r.stdout + r.stderr


def test_folder_neither_run_nor_pythae_refused(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "notes.txt").write_text("x")
    r = _bigmodel("export", str(tmp_path / "f"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "pythae model folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
