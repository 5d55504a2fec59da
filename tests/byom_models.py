"""Small PyTorch models no built-in family makes, and bundles of them written by hand, for the tests.

A DCGAN-style generator (N, 100, 1, 1) -> (N, 3, 32, 32) with tanh (range [-1, 1]) and its
discriminator; a class-conditional GAN (codes + int64 labels through nn.Embedding) on 1x28x28
images in [0, 1]; a BiGAN discriminator D(x, z) (a role with two float inputs). `write_bundle`
exports role modules with torch.onnx (dynamo, a dynamic batch axis on every input) and writes a
Manifest with the dataclasses, as the bring-your-own-model export will; `module_reference` is a
parity reference calling the torch modules themselves.

    bundle, modules = dcgan_bundle(tmp_path / "dcgan")
    model = bigmodel.runtime.load(bundle, backend="ort-cpu")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigmodel.checksum import sha256_file
from bigmodel.manifest import BATCH, DataSpec, LatentSpec, Manifest, ReferenceSpec, RoleSpec, TensorSpec

NZ = 100  # DCGAN code size: codes are (N, 100, 1, 1)
CLASSES = 10
COND_Z = 16


class DCGANGenerator(nn.Module):
    """(N, 100, 1, 1) -> (N, 3, 32, 32) in [-1, 1]: transposed convolutions, batch norm, tanh."""

    def __init__(self, nz: int = NZ, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, 4 * w, 4, 1, 0, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),  # 4x4
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),  # 8x8
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),  # 16x16
            nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=False), nn.Tanh(),  # 32x32
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """(N, 3, 32, 32) in [-1, 1] -> (N, 1) logits."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2),  # 16x16
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),  # 8x8
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2),  # 4x4
            nn.Conv2d(4 * w, 1, 4, 1, 0), nn.Flatten(),  # (N, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CondGenerator(nn.Module):
    """(codes (N, 16), labels (N,) int64) -> (N, 1, 28, 28) in [0, 1]: the label's embedding joins the code."""

    def __init__(self, nz: int = COND_Z, classes: int = CLASSES, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(classes, nz)
        self.net = nn.Sequential(nn.Linear(2 * nz, hidden), nn.ReLU(), nn.Linear(hidden, 784), nn.Sigmoid())

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(labels)], dim=1)  # (N, 2 * nz)
        return self.net(h).view(-1, 1, 28, 28)


class CondDiscriminator(nn.Module):
    """(images (N, 1, 28, 28), labels (N,)) -> (N, 1): a projection discriminator (feature . embed(label))."""

    def __init__(self, classes: int = CLASSES, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(classes, hidden)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (N, hidden)
        return self.out(h) + (h * self.embed(labels)).sum(dim=1, keepdim=True)


class BiGANDiscriminator(nn.Module):
    """(images (N, 1, 28, 28), codes (N, 16)) -> (N, 1): a role with two float inputs."""

    def __init__(self, nz: int = COND_Z, hidden: int = 32):
        super().__init__()
        self.x = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.LeakyReLU(0.2))
        self.z = nn.Sequential(nn.Linear(nz, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.x(x), self.z(z)], dim=1))


def image(name: str, shape: tuple[int, ...], value_range: tuple[float, float] | None = None) -> TensorSpec:
    return TensorSpec(name, "float32", [BATCH, *shape], "image", list(value_range) if value_range else None)


def latent(name: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, "float32", [BATCH, *shape], "latent")


def label(name: str = "labels", classes: int = CLASSES) -> TensorSpec:
    return TensorSpec(name, "int64", [BATCH], "label", classes=classes)


def logit(name: str = "logit") -> TensorSpec:
    return TensorSpec(name, "float32", [BATCH, 1], "logit")


def example_inputs(specs: list[TensorSpec], n: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One tensor per input: labels in range, images and codes standard normal (only shapes matter)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in specs:
        shape = (n, *[int(d) for d in t.shape[1:]])
        if t.kind == "label":
            out.append(torch.from_numpy(rng.integers(t.classes, size=shape)))
        else:
            out.append(torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)))
    return tuple(out)


def export_role(module: nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path) -> RoleSpec:
    """torch.onnx (dynamo, opset 18) with one dynamic batch axis shared by every input -> the role's entry."""
    module = module.eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(module, example_inputs(inputs), None, input_names=[t.name for t in inputs],
                                output_names=[t.name for t in outputs],
                                dynamic_shapes=tuple({0: batch} for _ in inputs), dynamo=True, opset_version=18,
                                optimize=True, verbose=False)
    program.save(str(path))
    return RoleSpec(path.name, sha256_file(path), inputs, outputs)


def write_bundle(folder: Path, roles: dict[str, tuple[nn.Module, list[TensorSpec], list[TensorSpec]]],
                 data: DataSpec, latent_spec: LatentSpec, family: str = "gan", arch: str = "byom") -> Path:
    """Export each role (module, inputs, outputs) into `folder` and write its manifest; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = {role: export_role(m, ins, outs, folder / f"{role}.onnx") for role, (m, ins, outs) in roles.items()}
    Manifest(family=family, arch=arch, data=data, latent=latent_spec, roles=specs,
             versions={"torch": torch.__version__}, reference=ReferenceSpec("none")).save(folder)
    return folder


def seeded(module: nn.Module, seed: int) -> nn.Module:
    """`module` with weights from torch.manual_seed(seed) and non-trivial batch-norm statistics, eval mode."""
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, 0.0, 0.2)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def dcgan_modules(seed: int = 0) -> dict[str, nn.Module]:
    return {"generator": seeded(DCGANGenerator(), seed), "discriminator": seeded(DCGANDiscriminator(), seed + 1)}


def dcgan_bundle(folder: Path, seed: int = 0, latent_spec: LatentSpec | None = None) -> tuple[Path, dict]:
    """A DCGAN bundle: generator (N, 100, 1, 1) -> (N, 3, 32, 32) in [-1, 1], discriminator images -> logits."""
    modules = dcgan_modules(seed)
    roles = {"generator": (modules["generator"], [latent("z", (NZ, 1, 1))], [image("x", (3, 32, 32), (-1, 1))]),
             "discriminator": (modules["discriminator"], [image("x", (3, 32, 32), (-1, 1))], [logit()])}
    data = DataSpec("made-up-rgb", (3, 32, 32), value_range=(-1.0, 1.0), scale=255.0)
    spec = latent_spec or LatentSpec(NZ, shape=[NZ, 1, 1])
    return write_bundle(folder, roles, data, spec, arch="dcgan"), modules


def cgan_modules(seed: int = 0) -> dict[str, nn.Module]:
    return {"generator": seeded(CondGenerator(), seed), "discriminator": seeded(CondDiscriminator(), seed + 1)}


def cgan_bundle(folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """A class-conditional GAN on mnist-5k's shape: generator (z, labels) -> images, discriminator (x, labels)."""
    modules = cgan_modules(seed)
    roles = {"generator": (modules["generator"], [latent("z", (COND_Z,)), label()], [image("x", (1, 28, 28))]),
             "discriminator": (modules["discriminator"], [image("x", (1, 28, 28)), label()], [logit()])}
    data = DataSpec("mnist-5k", (1, 28, 28), value_range=(0.0, 1.0))
    return write_bundle(folder, roles, data, LatentSpec(COND_Z), arch="cgan"), modules


def bigan_bundle(folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """An unconditional generator (z -> images) and a BiGAN discriminator taking (images, codes)."""
    gen = nn.Sequential(nn.Linear(COND_Z, 784), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))
    modules = {"generator": seeded(gen, seed), "discriminator": seeded(BiGANDiscriminator(), seed + 1)}
    roles = {"generator": (modules["generator"], [latent("z", (COND_Z,))], [image("x", (1, 28, 28))]),
             "discriminator": (modules["discriminator"], [image("x", (1, 28, 28)), latent("z", (COND_Z,))],
                               [logit()])}
    data = DataSpec("mnist-5k", (1, 28, 28))
    return write_bundle(folder, roles, data, LatentSpec(COND_Z), arch="bigan"), modules


class CondEncoder(nn.Module):
    """(images (N, 1, 28, 28), labels (N,)) -> (mu, logvar), each (N, 16): a conditional VAE's q(z|x, y)."""

    def __init__(self, nz: int = COND_Z, classes: int = CLASSES, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(classes, hidden)
        self.x = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden))
        self.out = nn.Linear(hidden, 2 * nz)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.out(torch.relu(self.x(x) + self.embed(labels))).chunk(2, dim=1)
        return mu, logvar


class CondDecoder(nn.Module):
    """(codes (N, 16), labels (N,)) -> (images in [0, 1], their Bernoulli logits), each (N, 1, 28, 28)."""

    def __init__(self, nz: int = COND_Z, classes: int = CLASSES, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(classes, nz)
        self.net = nn.Sequential(nn.Linear(2 * nz, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(torch.cat([z, self.embed(labels)], dim=1)).view(-1, 1, 28, 28)
        return torch.sigmoid(logits), logits


def cvae_bundle(folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """A conditional VAE: encoder (x, labels) -> (mu, logvar), decoder (z, labels) -> (x, logits)."""
    modules = {"encoder": seeded(CondEncoder(), seed), "decoder": seeded(CondDecoder(), seed + 1)}
    stat = TensorSpec("logvar", "float32", [BATCH, COND_Z], "stat")
    roles = {"encoder": (modules["encoder"], [image("x", (1, 28, 28)), label()], [latent("mu", (COND_Z,)), stat]),
             "decoder": (modules["decoder"], [latent("z", (COND_Z,)), label()],
                         [image("x", (1, 28, 28)), TensorSpec("logits", "float32", [BATCH, 1, 28, 28], "image_logit")])}
    data = DataSpec("mnist-5k", (1, 28, 28))
    return write_bundle(folder, roles, data, LatentSpec(COND_Z), family="vae", arch="cvae"), modules


class LookupGenerator(nn.Module):
    """(codes (N, 16), labels (N,)) -> the table's image of each label, barely moved by the code: a conditional
    generator whose samples show exactly the class asked for (when the table holds one image per class)."""

    def __init__(self, table: np.ndarray, nz: int = COND_Z):
        super().__init__()
        flat = np.clip(table.reshape(len(table), -1), 1e-3, 1 - 1e-3)
        self.embed = nn.Embedding.from_pretrained(torch.from_numpy(np.log(flat / (1 - flat))).float())
        self.mix = nn.Linear(nz, 1)
        self.shape = tuple(table.shape[1:])

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.embed(labels) + 0.01 * torch.tanh(self.mix(z))  # (N, C*H*W)
        return torch.sigmoid(logits).view(-1, *self.shape)


def lookup_bundle(folder: Path, table: np.ndarray) -> tuple[Path, dict]:
    """A conditional generator bundle on mnist-5k's shape whose class k is `table[k]`."""
    modules = {"generator": LookupGenerator(table).eval()}
    roles = {"generator": (modules["generator"], [latent("z", (COND_Z,)), label(classes=len(table))],
                           [image("x", tuple(table.shape[1:]))])}
    data = DataSpec("mnist-5k", tuple(table.shape[1:]))
    return write_bundle(folder, roles, data, LatentSpec(COND_Z), arch="lookup"), modules


def torch_run(module: nn.Module, *arrays: np.ndarray, output: int | None = None) -> np.ndarray:
    """The torch module on numpy inputs (in order), eval mode, float32 numpy out (of a tuple: the first, or
    `output`)."""
    with torch.inference_mode():
        out = module.eval()(*[torch.as_tensor(a) for a in arrays])
    return (out[output or 0] if isinstance(out, tuple) else out).numpy()


def module_reference(modules: dict[str, nn.Module], manifest: Manifest):
    """A parity reference (target, (probe, batch), feeds) -> outputs, from the torch modules themselves.

    Each role is called with its inputs in the manifest's order; a chain's next role gets the previous
    role's first output and its other inputs by name from the first role's feeds.
    """
    from bigmodel.parity.feeds import chain_feeds

    def reference(target, key, feeds):
        value = None
        for i, role in enumerate(target):
            spec = manifest.roles[role]
            step = feeds if i == 0 else chain_feeds(spec, value, feeds)
            with torch.inference_mode():
                out = modules[role].eval()(*[torch.as_tensor(step[t.name]) for t in spec.inputs])
            outs = [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
            value = outs[0]
        return outs

    return reference
