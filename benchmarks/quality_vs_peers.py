"""Quality against peers: pythae's VAE and Adversarial_AE, a textbook VAE, and bigmodel's families, one table.

Everyone trains on the same mnist-5k training split (seed 0: 4,500 images) with the same budget
where a setting exists (20 epochs, Adam 1e-3, batch 100; bigmodel's GAN runs its defaults) and
is scored by the same code as `bigmodel eval` on the 500 validation images: IWAE NLL (K
importance samples) for Gaussian-encoder models, FID / precision / recall / class coverage in the
feature space of the cached classifier. bigmodel's models are exported and scored through the
runtime (the bundle an application loads); the peers through an adapter with the runtime's
methods (encode(full=True), decode(logits=True), sample).

    pip install pythae   # with the CPU torch already installed: it pulls no other torch
    python benchmarks/quality_vs_peers.py [--only vae,aae,gan,ae,conv] [--seeds 0 1 2] [--vae-seeds 0 1]
                                          [--k 500] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small MLPs on a shared 2-core box: threads only spin

import numpy as np
import torch
from torch import nn

from bigmodel.data import load_data
from bigmodel.eval import EvalOptions, evaluate, evaluate_model, load_eval_data

EPOCHS, LR, BATCH = 20, 1e-3, 100


class Clock:
    """Wall and CPU seconds of one training. On a shared machine CPU time (one thread each) is the fair
    comparison: wall time also counts the other processes' turns on the cores."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


class TorchAdapter:
    """The runtime Model's methods over two torch callables: encoder x -> (mu, logvar) or z, decoder z -> logits."""

    def __init__(self, family: str, encoder, decoder_logits, latent_dim: int):
        self.family, self.encoder, self.decoder_logits, self.latent_dim = family, encoder, decoder_logits, latent_dim
        self.offers = ("encode", "decode", "sample") if encoder is not None else ("decode", "sample")

    @torch.no_grad()
    def encode(self, x, full: bool = False):
        out = self.encoder(torch.from_numpy(np.asarray(x, dtype=np.float32)))
        if isinstance(out, tuple):
            mu, logvar = (t.numpy() for t in out)
            return (mu, logvar) if full else mu
        return out.numpy()

    @torch.no_grad()
    def decode(self, z, logits: bool = False):
        lg = self.decoder_logits(torch.from_numpy(np.asarray(z, dtype=np.float32))).reshape(len(z), 1, 28, 28)
        return lg.numpy() if logits else torch.sigmoid(lg).numpy()

    def sample(self, n: int, seed: int = 0):
        return self.decode(np.random.default_rng(seed).standard_normal((n, self.latent_dim), dtype=np.float32))


def pythae_run(kind: str, train: np.ndarray, out: Path, seed: int) -> tuple[TorchAdapter, float]:
    """Train pythae's VAE or Adversarial_AE (its default MLPs, latent 16, BCE) -> (adapter, seconds)."""
    from pythae.models import VAE, Adversarial_AE, Adversarial_AE_Config, VAEConfig
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import AdversarialTrainerConfig, BaseTrainerConfig

    common = {"output_dir": str(out), "num_epochs": EPOCHS, "per_device_train_batch_size": BATCH,
              "per_device_eval_batch_size": BATCH, "seed": seed, "no_cuda": True}
    torch.manual_seed(seed)  # the model's initial weights (pythae seeds its trainer, after the model is built)
    if kind == "vae":
        model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=16, reconstruction_loss="bce"))
        config = BaseTrainerConfig(learning_rate=LR, **common)
    else:
        model = Adversarial_AE(Adversarial_AE_Config(input_dim=(1, 28, 28), latent_dim=16, reconstruction_loss="bce"))
        config = AdversarialTrainerConfig(autoencoder_learning_rate=LR, discriminator_learning_rate=LR, **common)
    clock = Clock()
    TrainingPipeline(model=model, training_config=config)(train_data=train, eval_data=None)
    seconds = clock.stop()
    model.eval()
    dec = model.decoder

    def logits(z):  # the default MLP decoder: Linear-ReLU, then Linear-Sigmoid; stop before the sigmoid
        return dec.layers[1][0](dec.layers[0](z))

    if kind == "vae":
        def enc(x):
            o = model.encoder(x)
            return o.embedding, o.log_covariance
    else:
        def enc(x):
            return model.encoder(x).embedding
    return TorchAdapter(kind, enc, logits, 16), seconds


class TextbookVAE(nn.Module):
    """The 30-line VAE of the PyTorch examples: 784-400-20, ReLU, BCE + KL."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def encode(self, x):
        h = torch.relu(self.fc1(x.reshape(len(x), -1)))
        return self.fc21(h), self.fc22(h)

    def logits(self, z):
        return self.fc4(torch.relu(self.fc3(z)))


def textbook_run(train: np.ndarray, seed: int) -> tuple[TorchAdapter, float]:
    torch.manual_seed(seed)
    model, x = TextbookVAE(), torch.from_numpy(train)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    clock = Clock()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x)).split(BATCH):
            xb = x[idx]
            mu, logvar = model.encode(xb)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            bce = nn.functional.binary_cross_entropy_with_logits(model.logits(z), xb.reshape(len(xb), -1),
                                                                 reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            opt.zero_grad()
            ((bce + kl) / len(xb)).backward()
            opt.step()
    model.eval()
    return TorchAdapter("vae", model.encode, model.logits, 20), clock.stop()


def bigmodel_run(family: str, arch: str, out: Path, seed: int, budget: bool,
                 model: dict | None = None) -> tuple[Path, float]:
    """`bigmodel train` (budget: 20 epochs, batch 100; else the family's defaults; `model`: family
    settings over the defaults), then export -> bundle."""
    from bigmodel.export import ExportOptions, export_bundle
    from bigmodel.training.loop import TrainSettings, train

    extra = {"epochs": EPOCHS, "batch_size": BATCH} if budget else {}
    clock = Clock()
    train(TrainSettings(family=family, arch=arch, seed=seed, device="cpu", out=str(out), model=model or {}, **extra))
    seconds = clock.stop()
    return export_bundle(out, ExportOptions(force=True)).bundle, seconds


def row(name: str, report: dict, seconds: tuple[float, float]) -> dict:
    rare = report["rare_classes"]
    return {"model": name, "iwae": report.get("nll", {}).get("iwae"), "fid": report["fid"],
            "precision": report["precision"], "recall": report["recall"],
            "classes": f"{len(report['coverage']) - len(rare)}/{len(report['coverage'])}",
            "train_wall_s": seconds[0], "train_cpu_s": seconds[1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="vae,aae,gan,ae,conv", help="groups to run: vae, aae, gan, ae, conv")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GAN seeds")
    p.add_argument("--vae-seeds", type=int, nargs="+", default=[0, 1],
                   help="seeds of pythae's VAE and bigmodel's mlp VAE (the textbook VAE: the first)")
    p.add_argument("--k", type=int, default=500, help="importance samples for the IWAE NLL")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    groups = set(args.only.split(","))
    data = load_data("mnist-5k", seed=0)
    opts = EvalOptions(k=args.k, samples=args.samples)
    spec = data.spec
    ev = load_eval_data(spec, opts)
    print(f"feature net accuracy {ev.classifier.accuracy:.3f}; FID of training vs validation images "
          f"{ev.floor_fid:.2f}", flush=True)
    rows = []

    def score_peer(name, adapter, seconds):
        rows.append(row(name, evaluate_model(adapter, spec, {"target": name}, opts, ev), seconds))
        print(rows[-1], flush=True)

    def score_ours(name, family, arch, seed=0, budget=True, model=None):
        folder = Path(tmp) / f"{family}-{arch}-{seed}-{len(rows)}"
        bundle, seconds = bigmodel_run(family, arch, folder, seed, budget, model)
        rows.append(row(name, evaluate(bundle, opts, ev), seconds))
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if "vae" in groups:
            for i, seed in enumerate(args.vae_seeds):
                score_peer(f"pythae VAE (MLP 784-512, latent 16), seed {seed}",
                           *pythae_run("vae", data.train, Path(tmp) / f"pv{seed}", seed))
                if i == 0:
                    score_peer(f"textbook VAE 784-400-20, seed {seed}", *textbook_run(data.train, seed))
                score_ours(f"bigmodel vae mlp, seed {seed}", "vae", "mlp", seed)
        if "conv" in groups:
            score_ours("bigmodel vae conv", "vae", "conv")
        if "aae" in groups:
            score_peer("pythae Adversarial_AE (MLP, latent 16)", *pythae_run("aae", data.train, Path(tmp) / "pa", 0))
            score_ours("bigmodel aae mlp", "aae", "mlp")
        if "gan" in groups:
            for seed in args.seeds:
                score_ours(f"bigmodel gan mlp (defaults), seed {seed}", "gan", "mlp", seed, budget=False)
        if "conv" in groups:
            for sn in (False, True):  # both settings named, whichever is the default
                score_ours(f"bigmodel gan conv (defaults but spectral norm {'on' if sn else 'off'})", "gan", "conv",
                           budget=False, model={"spectral_norm": sn})
        if "ae" in groups:
            score_ours("bigmodel ae mlp: sample() from the fitted prior", "ae", "mlp")

    print(f"\nmnist-5k, validation split (500 images), {args.samples} samples, K={args.k}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| model | IWAE NLL (nats) | FID | precision | recall | classes >= 1% | train CPU s (wall) |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        iwae = "-" if r["iwae"] is None else f"{r['iwae']:.1f}"
        print(f"| {r['model']} | {iwae} | {r['fid']:.0f} | {r['precision']:.2f} | {r['recall']:.2f} | "
              f"{r['classes']} | {r['train_cpu_s']:.0f} ({r['train_wall_s']:.0f}) |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "argv": sys.argv}, indent=2) + "\n")


if __name__ == "__main__":
    main()
