"""Training throughput: bigmodel's loop against a minimal hand-written PyTorch loop, same run.

Both train the same model (`create_model(FAMILY, ARCH)`, default VAE MLP) on the same mnist-5k
training tensor, with the same batch size, optimizer and loss, on the same number of threads.
bigmodel's figure is the `samples_per_s` that `bigmodel.training.loop.train` records per epoch
(the batch loop only: validation, checkpoints and pictures are excluded); the hand loop is timed
the same way, per epoch. Rounds alternate the two, and each side's median over all its epochs is
compared. Goal: ratio (bigmodel / hand) >= 0.9.

    python benchmarks/train_throughput.py [--epochs 3] [--rounds 3] [--batch-size 128] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bigmodel.data import load_data
from bigmodel.models import create_model
from bigmodel.training.loop import TrainSettings, train

GOAL = 0.9


def hand_vae_loss(model, x: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """The VAE loss written out: Bernoulli recon summed over pixels + beta * KL, mean over the batch."""
    mu, logvar = model.encoder(x)
    eps = torch.randn(mu.shape, generator=noise)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = model.decoder(z)
    recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return (recon + model.config.beta * kl).mean()


def hand_loop(train_x: torch.Tensor, epochs: int, batch_size: int, seed: int) -> list[float]:
    """Plain PyTorch: randperm, slice, forward, loss, zero_grad, backward, step. Samples/s per epoch."""
    torch.manual_seed(seed)
    model = create_model("vae", "mlp").train()
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    shuffle = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    batches = len(train_x) // batch_size
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=shuffle)
        t0 = time.perf_counter()
        for b in range(batches):
            x = train_x[order[b * batch_size : (b + 1) * batch_size]]
            loss = hand_vae_loss(model, x, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return rates


def bigmodel_loop(epochs: int, batch_size: int, seed: int, out: str) -> list[float]:
    settings = TrainSettings(family="vae", arch="mlp", dataset="mnist-5k", epochs=epochs, batch_size=batch_size,
                             seed=seed, device="cpu", out=out)
    return [h["samples_per_s"] for h in train(settings).history]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per round and side")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (bigmodel, hand, bigmodel, ...)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    train_x = torch.from_numpy(load_data("mnist-5k", seed=0).train)  # the tensor the loop trains on
    print(f"VAE MLP on mnist-5k: {len(train_x)} images, batch {a.batch_size}, {a.epochs} epochs x {a.rounds} "
          f"rounds, {torch.get_num_threads()} threads, torch {torch.__version__}")
    ours, hand = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            # Alternate which side goes first so drift (thermal, other load) hits both alike.
            sides = [("bigmodel", None), ("hand", None)]
            for name, _ in sides if r % 2 == 0 else sides[::-1]:
                if name == "bigmodel":
                    rates = bigmodel_loop(a.epochs, a.batch_size, seed=r, out=f"{tmp}/run{r}")
                    ours += rates
                else:
                    rates = hand_loop(train_x, a.epochs, a.batch_size, seed=r)
                    hand += rates
                print(f"  round {r + 1} {name:8s}: " + "  ".join(f"{v:9,.0f}" for v in rates) + "  samples/s")
    m_ours, m_hand = statistics.median(ours), statistics.median(hand)
    ratio = m_ours / m_hand
    print(f"bigmodel loop : {m_ours:10,.0f} samples/s (median of {len(ours)} epochs)")
    print(f"hand loop     : {m_hand:10,.0f} samples/s (median of {len(hand)} epochs)")
    print(f"ratio         : {ratio:.3f}  (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
