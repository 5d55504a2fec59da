"""Training throughput: bigmodel's loop against a minimal hand-written PyTorch loop, in one run.

Both train the same model (`create_model("vae")`, the default VAE MLP) on the same mnist-5k
training tensor with the same batch size, optimizer (Adam at the model's lr) and loss, on the same
number of threads. bigmodel's figure is the `samples_per_s` that `bigmodel.training.loop.train`
records per epoch (the batch loop only: validation, checkpoint and pictures are outside it); the
hand loop is timed the same way. The two alternate in short rounds, each side starting a fresh
model every round and the side that goes first alternating too, so drift in the machine's speed
hits both alike. Printed: each side's median samples/s over all its epochs, their ratio, and the
median of the per-round ratios. Goal: ratio >= 0.9.

Wall-clock rates swing when other processes share the CPUs, so the same comparison is also
printed in CPU time (samples per CPU-second of this process, batches 2..N of each epoch on
both sides): on a busy machine that is the steadier figure of how much work each loop does.

    python benchmarks/train_throughput.py [--rounds 4] [--epochs 3] [--batch-size 128] [--threads N]

On a shared 2-vCPU machine --threads 1 is steadier still (no spinning OpenMP barrier waiting
on a descheduled vCPU); both sides always share the setting.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bigmodel.data import load_data
from bigmodel.models import create_model
from bigmodel.progress import Progress
from bigmodel.training.loop import TrainSettings, train

GOAL = 0.9


def vae_loss(model, x: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """The VAE loss written out: Bernoulli recon summed over pixels + beta * KL, mean over the batch."""
    mu, logvar = model.encoder(x)
    eps = torch.randn(mu.shape, generator=noise)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = model.decoder(z)
    recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return (recon + model.config.beta * kl).mean()


def hand_run(train_x: torch.Tensor, epochs: int, batch_size: int, seed: int) -> tuple[list[float], list[float]]:
    """Plain PyTorch: randperm, slice, forward, loss, zero_grad, backward, step.

    Returns per-epoch (wall samples/s, samples per CPU-second over batches 2..N)."""
    torch.manual_seed(seed)
    model = create_model("vae").train()
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    shuffle = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    batches = len(train_x) // batch_size  # the last partial batch is dropped, as the loop does
    wall, cpu = [], []
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=shuffle)
        t0 = time.perf_counter()
        for b in range(batches):
            if b == 1:
                c1 = time.process_time()
            x = train_x[order[b * batch_size : (b + 1) * batch_size]]
            loss = vae_loss(model, x, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        wall.append(batches * batch_size / (time.perf_counter() - t0))
        cpu.append((batches - 1) * batch_size / (time.process_time() - c1))
    return wall, cpu


def bigmodel_run(epochs: int, batch_size: int, seed: int, out: str) -> tuple[list[float], list[float]]:
    """A fresh bigmodel run; per epoch, the samples/s it records and samples per CPU-second (batches 2..N)."""
    marks: dict[int, float] = {}
    cpu: list[float] = []

    def progress(p: Progress) -> None:  # "train" after each batch: batch 1 ends where the hand loop's c1 starts
        if p.stage != "train":
            return
        epoch = p.metrics["epoch"]
        if p.done == 1:
            marks[epoch] = time.process_time()
        elif p.done == p.total:
            cpu.append((p.total - 1) * batch_size / (time.process_time() - marks[epoch]))

    settings = TrainSettings(family="vae", arch="mlp", dataset="mnist-5k", epochs=epochs, batch_size=batch_size,
                             seed=seed, device="cpu", out=out)
    return [h["samples_per_s"] for h in train(settings, progress=progress).history], cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per side and round (default 3)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    train_x = torch.from_numpy(load_data("mnist-5k", seed=0).train)  # the very tensor the loop trains on
    print(f"VAE MLP on mnist-5k: {len(train_x)} training images, batch {a.batch_size}, {a.rounds} rounds x "
          f"{a.epochs} epochs per side, {torch.get_num_threads()} threads, torch {torch.__version__}")
    hand_run(train_x, 1, a.batch_size, seed=0)  # warm-up: the process's first epoch pays one-off costs
    wall = {"bigmodel": [], "hand": []}
    cpu = {"bigmodel": [], "hand": []}
    per_round = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            sides = ["bigmodel", "hand"] if r % 2 == 0 else ["hand", "bigmodel"]
            got = {}
            for side in sides:
                if side == "bigmodel":
                    got[side] = bigmodel_run(a.epochs, a.batch_size, seed=r, out=f"{tmp}/round{r}")
                else:
                    got[side] = hand_run(train_x, a.epochs, a.batch_size, seed=r)
                wall[side] += got[side][0]
                cpu[side] += got[side][1]
                print(f"  round {r + 1} {side:8s}: " + "  ".join(f"{v:8,.0f}" for v in got[side][0])
                      + "  samples/s   (" + "  ".join(f"{v:8,.0f}" for v in got[side][1]) + "  per CPU-s)")
            per_round.append(statistics.median(got["bigmodel"][0]) / statistics.median(got["hand"][0]))
    med = {k: {s: statistics.median(v[s]) for s in v} for k, v in (("wall", wall), ("cpu", cpu))}
    ratio = med["wall"]["bigmodel"] / med["wall"]["hand"]
    print(f"bigmodel loop : {med['wall']['bigmodel']:9,.0f} samples/s   {med['cpu']['bigmodel']:9,.0f} per CPU-s"
          f"   (medians of {len(wall['bigmodel'])} epochs)")
    print(f"hand loop     : {med['wall']['hand']:9,.0f} samples/s   {med['cpu']['hand']:9,.0f} per CPU-s")
    print(f"ratio         : {ratio:.3f} wall (median of per-round ratios {statistics.median(per_round):.3f}), "
          f"{med['cpu']['bigmodel'] / med['cpu']['hand']:.3f} CPU time; "
          f"goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
