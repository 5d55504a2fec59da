"""Bring your own model: modules trained outside bigmodel, exported through `export_modules` / `export --module`,
then checked from a fresh process that cannot import them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel.data import load_data
from bigmodel.errors import ExportError, InputError
from bigmodel.export import IO, ExportOptions, Role, export_modules
from bigmodel.manifest import read_manifest
from bigmodel.runtime import load
from tests.byom_models import CLASSES, NZ, cgan_modules, dcgan_modules

VAE_FILE = '''
import torch
from torch import nn

Z = 8


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 2 * Z))

    def forward(self, x):
        h = self.net(x)
        return {"mu": h[:, :Z], "logvar": h[:, Z:]}  # a dict, as many libraries return


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z, 128), nn.ReLU(), nn.Linear(128, 784))

    def forward(self, z):
        return self.net(z).view(-1, 1, 28, 28)  # Bernoulli logits


def make():
    return {"encoder": Encoder(), "decoder": Decoder()}
'''


def _bigmodel(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "bigmodel", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _load_user_file(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_vae_for_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def own_vae(tmp_path_factory):
    """A VAE trained in a loop of its own (no bigmodel.training), exported with the preset; its code then deleted."""
    root = tmp_path_factory.mktemp("own")
    code = root / "user_code" / "my_vae.py"
    code.parent.mkdir()
    code.write_text(VAE_FILE)
    roles = _load_user_file(code).make()
    torch.manual_seed(0)
    x = torch.from_numpy(load_data("mnist-5k").train[:2000])
    params = [*roles["encoder"].parameters(), *roles["decoder"].parameters()]
    opt = torch.optim.Adam(params, 1e-3)
    for _ in range(60):
        batch = x[torch.randint(0, len(x), (64,))]
        out = roles["encoder"](batch)
        z = out["mu"] + torch.exp(0.5 * out["logvar"]) * torch.randn_like(out["mu"])
        recon = nn.functional.binary_cross_entropy_with_logits(roles["decoder"](z), batch, reduction="sum") / 64
        kl = -0.5 * torch.sum(1 + out["logvar"] - out["mu"] ** 2 - out["logvar"].exp()) / 64
        opt.zero_grad()
        (recon + kl).backward()
        opt.step()
    torch.save({r: m.state_dict() for r, m in roles.items()}, root / "weights.pt")
    result = export_modules(roles, "mnist-5k", root / "bundle", family="vae", image_logits=True)
    code.unlink()  # the user's code is gone: everything after this must run from the bundle alone
    return root, result


def test_own_vae_bundle_describes_its_reference(own_vae):
    root, result = own_vae
    m = read_manifest(root / "bundle")
    assert m.family == "vae" and m.arch == "custom" and m.checkpoint_sha256 == ""
    assert m.reference.kind == "torch.export" and set(m.reference.programs) == {"encoder", "decoder"}
    assert [t.name for t in m.roles["encoder"].outputs] == ["mu", "logvar"]
    assert [(t.name, t.kind) for t in m.roles["decoder"].outputs] == [("x", "image"), ("logits", "image_logit")]
    assert all((root / "bundle" / f.file).is_file() for f in m.reference.programs.values())
    assert max(max(r.max_abs_err.values()) for r in result.roles) < 1e-5


def test_parity_bench_eval_sample_run_without_the_users_code(own_vae, tmp_path):
    root, _ = own_vae
    bundle = str(root / "bundle")
    parity = _bigmodel("parity", bundle, "--backend", "ort-cpu", "--json", str(tmp_path / "p.json"), cwd=tmp_path)
    assert parity.returncode == 0, parity.stdout + parity.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["backends"][0]["status"] == "ran" and "torch.export" in report["checkpoint"]
    bench = _bigmodel("bench", bundle, "--backends", "torch,ort-cpu", "--batch-sizes", "1,8", "--iters", "20",
                      "--json", str(tmp_path / "b.json"), cwd=tmp_path)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    ran = {r["backend"] for r in rows if r.get("status") != "skipped"}
    assert {"torch", "ort-cpu"} <= ran
    ev = _bigmodel("eval", bundle, "--k", "20", "--samples", "200", cwd=tmp_path)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "-ELBO" in ev.stdout
    sample = _bigmodel("sample", bundle, "-n", "8", "--seed", "0", "--out", str(tmp_path / "s.png"), cwd=tmp_path)
    assert sample.returncode == 0 and (tmp_path / "s.png").is_file(), sample.stderr


def test_export_module_cli_with_weights_matches_the_api_bundle(own_vae, tmp_path):
    root, _ = own_vae
    code = tmp_path / "my_vae.py"
    code.write_text(VAE_FILE)
    run = _bigmodel("export", "--module", f"{code}:make", "--weights", str(root / "weights.pt"), "--family", "vae",
                    "--data", "mnist-5k", "--image-logits", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    z = np.random.default_rng(0).standard_normal((5, 8), dtype=np.float32)
    with load(root / "bundle") as a, load(tmp_path / "b") as b:
        np.testing.assert_allclose(a.decode(z), b.decode(z), atol=1e-6)


def test_random_op_in_forward_exits_2_naming_the_role_and_the_fix(tmp_path):
    code = tmp_path / "noisy.py"
    code.write_text(VAE_FILE.replace("        return self.net(z).view(-1, 1, 28, 28)  # Bernoulli logits",
                                     "        return self.net(z + 0.1 * torch.randn_like(z)).view(-1, 1, 28, 28)"))
    before = sorted(p.name for p in tmp_path.iterdir())
    run = _bigmodel("export", "--module", f"{code}:make", "--family", "vae", "--data", "mnist-5k", "--out",
                    str(tmp_path / "bundle"), cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    line = run.stderr.strip().splitlines()
    assert len(line) == 1 and "decoder" in line[0] and "take the noise as an input" in line[0], run.stderr
    assert "noisy.py:" in line[0] and "randn" in line[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == before  # no bundle, no temporary


class _BatchStats(nn.Module):
    """A decoder that normalises over the batch axis: each sample's output depends on the others."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 784)

    def forward(self, z):
        h = self.net(z)
        return torch.sigmoid((h - h.mean(0)) / (h.std(0, correction=0) + 1)).view(-1, 1, 28, 28)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 784)

    def forward(self, z):
        if z.sum() > 0:  # data-dependent control flow
            return torch.sigmoid(self.net(z)).view(-1, 1, 28, 28)
        return torch.sigmoid(-self.net(z)).view(-1, 1, 28, 28)


class _Baked(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 784)

    def forward(self, z):
        return torch.sigmoid(self.net(z)).view(2, 1, 28, 28)  # the example batch baked in


def _gen_decoder(decoder, tmp_path):
    roles = {"decoder": Role(decoder, [IO("z", "latent", (8,))], [IO("x", "image")])}
    return export_modules(roles, "mnist-5k", tmp_path / "bundle")


@pytest.mark.parametrize(("module", "words"), [
    (_BatchStats, "depends on the rest of its batch"),
    (_Branchy, "data-dependent control flow"),
    (_Baked, "batch size is fixed"),
])
def test_modules_that_cannot_export_fail_before_anything_is_written(module, words, tmp_path):
    with pytest.raises(ExportError, match=words) as e:
        _gen_decoder(module(), tmp_path)
    assert str(e.value).startswith("decoder: ") and "\n" not in str(e.value)
    assert not (tmp_path / "bundle").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_declarations_are_checked_against_what_the_module_returns(tmp_path):
    dec = nn.Sequential(nn.Linear(8, 784), nn.Unflatten(1, (1, 28, 28)))
    with pytest.raises(InputError, match="declared 2 output"):
        export_modules({"decoder": Role(dec, [IO("z", "latent", (8,))], [IO("x", "image"), IO("y")])}, "mnist-5k",
                       tmp_path / "b")
    with pytest.raises(InputError, match="image of shape"):
        export_modules({"decoder": Role(nn.Linear(8, 784), [IO("z", "latent", (8,))], [IO("x", "image")])},
                       "mnist-5k", tmp_path / "b")
    with pytest.raises(InputError, match="takes the roles encoder, decoder"):
        export_modules({"decoder": dec}, "mnist-5k", tmp_path / "b", family="vae")
    assert not (tmp_path / "b").exists()


def _cifar_like(n: int = 256) -> np.ndarray:
    """(n, 3, 32, 32) in [-1, 1]: mnist-5k digits padded to 32x32 and tinted per channel."""
    x = np.pad(load_data("mnist-5k").val[:n], ((0, 0), (0, 0), (2, 2), (2, 2)))
    return (np.concatenate([x, 0.5 * x, 1.0 - x], axis=1) * 2 - 1).astype(np.float32)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_dcgan_generator_and_discriminator(precision, tmp_path):
    result = export_modules(dcgan_modules(), _cifar_like(), tmp_path / "b", family="gan", value_range=(-1, 1),
                            latent=(NZ, 1, 1), options=ExportOptions(precision=precision, calibration=64))
    m = result.manifest
    assert m.latent.code_shape == (NZ, 1, 1) and m.data.shape == (3, 32, 32) and m.precision == precision
    assert m.reference.examples is not None  # an array's images travel, so parity needs no data of its own
    with load(tmp_path / "b") as model:
        x = model.sample(5, seed=0)
        assert x.shape == (5, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
        assert model.discriminate(x).shape == (5, 1)
    from bigmodel.parity import run_parity

    report = run_parity(tmp_path / "b", backends="ort-cpu")
    assert report.passed, report


def test_conditional_gan_through_export_parity_and_runtime(tmp_path):
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        export_modules(cgan_modules(), "mnist-5k", out, family="gan", latent=16, classes=CLASSES,
                       options=ExportOptions(precision=precision, calibration=64))
        m = read_manifest(out)
        assert [(t.name, t.kind, t.classes) for t in m.roles["generator"].inputs] == [("z", "latent", None),
                                                                                      ("labels", "label", CLASSES)]
        from bigmodel.parity import run_parity

        assert run_parity(out, backends="ort-cpu").passed
        with load(out) as model:
            a = model.sample(4, seed=0, labels=3)
            b = model.sample(4, seed=0, labels=np.array([3, 3, 3, 3]))
            np.testing.assert_array_equal(a, b)
            assert not np.allclose(a, model.sample(4, seed=0, labels=7))
