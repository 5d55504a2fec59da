"""bigmodel.models: the registry, role graphs, the losses as the papers state them, and learning on real data."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from bigmodel.errors import ConfigError
from bigmodel.manifest import DataSpec
from bigmodel.models import create_model, families, list_models
from bigmodel.models.registry import family_class
from bigmodel.training.loop import Ranks, make_step

MODELS = [pytest.param(m.family, m.arch, id=f"{m.family}-{m.arch}") for m in list_models()]
CPU = torch.device("cpu")


def _build(family: str, arch: str, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return create_model(family, arch, **cfg)


class Recorder:
    """A `step` for train_step that records (optimizer name, loss) and updates nothing."""

    def __init__(self):
        self.calls: list[tuple[str, torch.Tensor]] = []

    def __call__(self, name: str, loss: torch.Tensor) -> None:
        self.calls.append((name, loss))

    def loss(self, name: str) -> torch.Tensor:
        return next(loss for n, loss in self.calls if n == name)


# ---- registry ------------------------------------------------------------------------------------


def test_list_models_is_every_family_times_every_arch() -> None:
    assert families() == ["aae", "ae", "gan", "vae"]
    pairs = [(m.family, m.arch) for m in list_models()]
    assert sorted(pairs) == sorted((f, a) for f in ("ae", "vae", "gan", "aae") for a in ("mlp", "conv"))
    roles = {m.family: m.roles for m in list_models()}
    assert roles == {
        "ae": ("encoder", "decoder"),
        "vae": ("encoder", "decoder"),
        "gan": ("generator", "discriminator"),
        "aae": ("encoder", "decoder", "discriminator"),
    }


@pytest.mark.parametrize(
    ("call", "facts"),
    [
        (lambda: create_model("flow"), ["'flow'", "aae, ae, gan, vae"]),
        (lambda: create_model("vae", arch="resnet"), ["'resnet'", "mlp, conv"]),
        (lambda: create_model("vae", latent_dim=0), ["latent_dim", "positive", "0"]),
        (lambda: create_model("vae", lr=-1.0), ["lr", "-1.0"]),
        (lambda: create_model("vae", beta=-0.5), ["beta", "-0.5"]),
        (lambda: create_model("aae", prior="laplace"), ["normal, mixture", "'laplace'"]),
        (lambda: create_model("gan", beta=1.0), ["gan has no setting beta", "latent_dim"]),
        (lambda: create_model("vae", "conv", DataSpec("x", (1, 30, 30))), ["divisible by 4", "30x30"]),
    ],
    ids=["family", "arch", "latent-dim-0", "lr", "beta", "prior", "unknown-setting", "conv-shape"],
)
def test_bad_model_settings_name_expected_and_got(call, facts) -> None:
    with pytest.raises(ConfigError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message
    for fact in facts:
        assert fact in message


def test_config_is_a_dataclass_with_family_defaults() -> None:
    import dataclasses

    for family, latent in {"ae": 32, "vae": 20, "gan": 100, "aae": 8}.items():
        cls = family_class(family).config_cls
        assert dataclasses.is_dataclass(cls)
        assert cls().latent_dim == latent
    assert create_model("vae", latent_dim=5, beta=4.0).config.beta == 4.0


# ---- roles ---------------------------------------------------------------------------------------

SPECS = [DataSpec("mnist", (1, 28, 28)), DataSpec("cifar", (3, 32, 32)), DataSpec("digits", (1, 8, 8))]


@pytest.mark.parametrize(("family", "arch"), MODELS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "x".join(map(str, s.shape)))
def test_roles_map_declared_inputs_to_declared_outputs(family: str, arch: str, spec: DataSpec) -> None:
    model = _build(family, arch, data=spec).eval()
    latent = model.config.latent_dim
    batch = 3
    feeds = {"image": torch.rand(batch, *spec.shape), "latent": torch.randn(batch, latent)}
    expected = {"image": (batch, *spec.shape), "latent": (batch, latent), "stat": (batch, latent),
                "logit": (batch, 1)}
    with torch.no_grad():
        for role, io in model.roles.items():
            (in_name, in_kind), = io.inputs
            out = model.role_module(role)(feeds[in_kind])
            outs = out if isinstance(out, tuple) else (out,)
            assert len(outs) == len(io.outputs), role
            for tensor, (name, kind) in zip(outs, io.outputs, strict=True):
                want = expected["image"] if name == "logits" else expected[kind]  # an image role's pixel logits
                assert tuple(tensor.shape) == want, (role, name)
                assert tensor.dtype == torch.float32
                if kind == "image":  # images come out in the data range
                    assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    samples = model.generate(model.prior(batch, torch.Generator().manual_seed(0)))
    assert tuple(samples.shape) == (batch, *spec.shape)


@pytest.mark.parametrize(("family", "arch"), MODELS)
def test_role_graphs_hold_no_randomness(family: str, arch: str) -> None:
    """Noise is an input: the same inputs give the same outputs, bit for bit, whatever the global RNG does."""
    model = _build(family, arch).eval()
    x = torch.rand(4, 1, 28, 28)
    z = torch.randn(4, model.config.latent_dim)
    with torch.no_grad():
        for role, io in model.roles.items():
            feed = x if io.inputs[0][1] == "image" else z
            torch.manual_seed(1)
            first = model.role_module(role)(feed)
            torch.manual_seed(2)
            second = model.role_module(role)(feed)
            for a, b in zip(first if isinstance(first, tuple) else (first,),
                            second if isinstance(second, tuple) else (second,), strict=True):
                assert torch.equal(a, b), role


# ---- losses, exactly as the papers state them --------------------------------------------------------


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_vae_loss_is_summed_bce_plus_beta_kl_batch_mean(arch: str, beta: float, mnist5k) -> None:
    model = _build("vae", arch, beta=beta)
    x = torch.from_numpy(mnist5k.train[:16])
    rec = Recorder()
    terms = model.train_step(x, torch.Generator().manual_seed(3), rec)
    assert [name for name, _ in rec.calls] == ["vae"]

    mu, logvar = model.encoder(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
    logits = model.decoder(mu + torch.exp(0.5 * logvar) * eps)
    recon = torch.stack([F.binary_cross_entropy_with_logits(logits[i], x[i], reduction="sum") for i in range(16)])
    kl = torch.stack([-0.5 * torch.sum(1 + logvar[i] - mu[i] ** 2 - logvar[i].exp()) for i in range(16)])
    torch.testing.assert_close(rec.loss("vae"), (recon + beta * kl).mean(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["kl"], kl.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["nelbo"], (recon + kl).mean(), rtol=1e-5, atol=1e-4)
    assert rec.loss("vae").requires_grad and not terms["loss"].requires_grad


def test_vae_gaussian_likelihood_is_half_squared_error(mnist5k) -> None:
    model = _build("vae", "mlp", likelihood="gaussian", beta=0.0)
    x = torch.from_numpy(mnist5k.train[:8])
    terms = model.eval_losses(x, torch.Generator().manual_seed(0))
    mu, logvar = model.encoder(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    mean = torch.sigmoid(model.decoder(mu + torch.exp(0.5 * logvar) * eps))
    torch.testing.assert_close(terms["recon"], (0.5 * (mean - x) ** 2).flatten(1).sum(1).mean())
    torch.testing.assert_close(terms["loss"], terms["recon"])  # beta = 0


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_gan_losses_use_logits_detach_fakes_for_d_and_are_non_saturating_for_g(arch: str, mnist5k) -> None:
    # without spectral norm: its power iteration moves D's weights a little at every train-mode forward
    model = _build("gan", arch, spectral_norm=False)
    x = torch.from_numpy(mnist5k.train[:16])
    rec = Recorder()
    model.train_step(x, torch.Generator().manual_seed(5), rec)
    assert [name for name, _ in rec.calls] == ["discriminator", "generator"]

    z = model.prior(16, torch.Generator().manual_seed(5))
    fake = torch.sigmoid(model.generator(z))
    d_real, d_fake = model.discriminator(x), model.discriminator(fake)
    expected_d = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
        F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    expected_g = -F.logsigmoid(d_fake).mean()  # non-saturating: -log D(G(z))
    torch.testing.assert_close(rec.loss("discriminator"), expected_d)
    torch.testing.assert_close(rec.loss("generator"), expected_g)

    # D's loss must not reach the generator (fakes detached); G's loss must.
    model.zero_grad(set_to_none=True)
    rec.loss("discriminator").backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())
    model.zero_grad(set_to_none=True)
    rec.loss("generator").backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())


def _spectral_normed(model) -> bool:
    return any(hasattr(m, "parametrizations") for m in model.discriminator.modules())


def test_gan_spectral_norm_is_on_by_default_and_none_rebuilds_older_runs() -> None:
    assert _spectral_normed(_build("gan", "mlp")) and _spectral_normed(_build("gan", "conv"))
    assert not _spectral_normed(_build("gan", "conv", spectral_norm=False))
    # runs saved before conv had it store None: mlp on, conv off, as they were trained
    assert _spectral_normed(_build("gan", "mlp", spectral_norm=None))
    assert not _spectral_normed(_build("gan", "conv", spectral_norm=None))


def test_gan_spectral_norm_bounds_d_and_ema_generator_is_the_exported_one(mnist5k) -> None:
    model = _build("gan", "mlp", ema=0.9).train()
    x = torch.from_numpy(mnist5k.train[:64])
    step = make_step(model.optimizers(), Ranks(CPU))
    live0 = [p.detach().clone() for p in model.generator.parameters()]
    avg0 = [p.detach().clone() for p in model.generator_ema.parameters()]
    model.train_step(x, torch.Generator().manual_seed(0), step)
    # one step: average = 0.9 * old average + 0.1 * new live weights
    for a0, a, live in zip(avg0, model.generator_ema.parameters(), model.generator.parameters(), strict=True):
        torch.testing.assert_close(a, 0.9 * a0 + 0.1 * live)
    assert any(not torch.equal(a, b) for a, b in zip(live0, model.generator.parameters(), strict=True))
    model.eval()
    assert model.role_module("generator").net is model.generator_ema
    for _ in range(20):  # spectral norm's power iteration runs in train-mode forwards
        model.train()
        model.discriminator(x)
    model.eval()
    for layer in (m for m in model.discriminator.modules() if isinstance(m, torch.nn.Linear)):
        assert float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2)) == pytest.approx(1.0, abs=0.05)
    # a checkpoint without the average (saved before it existed) starts it at the generator
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("generator_ema.")}
    fresh = _build("gan", "mlp", seed=1, ema=0.9)
    fresh.load_state_dict(state)
    for a, live in zip(fresh.generator_ema.parameters(), fresh.generator.parameters(), strict=True):
        assert torch.equal(a, live)
    with pytest.raises(ConfigError, match="ema must be in"):
        _build("gan", "mlp", ema=1.0)


@pytest.mark.parametrize("prior", ["normal", "mixture"])
def test_aae_two_steps_per_batch(prior: str, mnist5k) -> None:
    model = _build("aae", "mlp", prior=prior, adv_weight=3.0)
    x = torch.from_numpy(mnist5k.train[:16])
    rec = Recorder()
    terms = model.train_step(x, torch.Generator().manual_seed(0), rec)
    assert [name for name, _ in rec.calls] == ["autoencoder", "discriminator"]
    assert set(model.optimizers()) == {"autoencoder", "discriminator"}
    assert set(terms) == {"recon", "d_loss", "g_loss"}

    # (1) autoencoder: summed BCE on logits (batch mean) + adv_weight * BCE(D(E(x)), 1), the encoder
    # as generator; reaches encoder and decoder.
    codes = model.encoder(x)
    recon = F.binary_cross_entropy_with_logits(model.decoder(codes), x, reduction="sum") / len(x)
    fool = -F.logsigmoid(model.discriminator(codes)).mean()
    torch.testing.assert_close(terms["recon"], recon.detach())
    torch.testing.assert_close(terms["g_loss"], fool.detach())
    torch.testing.assert_close(rec.loss("autoencoder"), recon + 3.0 * fool)
    model.zero_grad(set_to_none=True)
    rec.loss("autoencoder").backward()
    assert all(p.grad is not None for p in [*model.encoder.parameters(), *model.decoder.parameters()])
    # (2) discriminator: prior samples labelled 1, codes labelled 0; codes detached from the encoder.
    z_prior = model.prior(16, torch.Generator().manual_seed(0))
    expected_d = -F.logsigmoid(model.discriminator(z_prior)).mean() - F.logsigmoid(-model.discriminator(codes)).mean()
    torch.testing.assert_close(rec.loss("discriminator"), expected_d)
    model.zero_grad(set_to_none=True)
    rec.loss("discriminator").backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())
    # The discriminator looks at codes, not images.
    assert model.discriminator[0].in_features == model.config.latent_dim
    with pytest.raises(ConfigError, match="adv_weight"):
        _build("aae", "mlp", adv_weight=-1.0)


def test_aae_priors_draw_their_laws() -> None:
    normal = _build("aae", "mlp", prior="normal", latent_dim=6)
    z = normal.prior(20000, torch.Generator().manual_seed(0))
    assert z.shape == (20000, 6)
    assert z.mean().abs() < 0.03 and abs(z.std().item() - 1.0) < 0.03

    mixture = _build("aae", "mlp", prior="mixture", latent_dim=6)
    spec = mixture.latent_spec()
    means = torch.tensor(spec.params["means"])
    assert spec.prior == "mixture" and means.shape == (10, 6)
    torch.testing.assert_close(means.norm(dim=1), torch.full((10,), 2.0))  # 10 components on a radius-2 sphere
    z = mixture.prior(20000, torch.Generator().manual_seed(0))
    nearest = torch.cdist(z, means).min(dim=1)
    # Each sample lies within a few std of some component, and all 10 components are used.
    assert nearest.values.max() < 6 * spec.params["std"] * math.sqrt(6)
    assert len(nearest.indices.unique()) == 10
    torch.testing.assert_close(z.std(dim=0).mean(), torch.tensor(
        math.sqrt(spec.params["std"] ** 2 + (means ** 2).mean().item())), rtol=0.05, atol=0.0)


def test_same_seed_same_prior_samples() -> None:
    for m in list_models():
        model = _build(m.family, m.arch)
        a = model.prior(8, torch.Generator().manual_seed(11))
        b = model.prior(8, torch.Generator().manual_seed(11))
        assert torch.equal(a, b)


# ---- every registered model learns on real digits -------------------------------------------------

STEPS = 10
BATCH = 32


@pytest.mark.parametrize(("family", "arch"), MODELS)
def test_every_model_learns_on_real_digits(family: str, arch: str, mnist5k) -> None:
    """A few optimizer steps through the loop's own `make_step` move held-out losses the right way.

    AE, VAE: the loss on validation digits falls. AAE: the reconstruction loss falls. GAN: the
    discriminator's held-out loss falls from its start (~2 ln 2) and it tells real digits from
    fresh fakes; "the GAN loss falls" would not be a real signal.
    """
    model = _build(family, arch).train()
    step = make_step(model.optimizers(), Ranks(CPU))
    train_x = torch.from_numpy(mnist5k.train[: STEPS * BATCH])
    val_x = torch.from_numpy(mnist5k.val[:256])

    def held_out() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            losses = model.eval_losses(val_x, torch.Generator().manual_seed(7))
        model.train()
        return {k: float(v) for k, v in losses.items()}

    before = held_out()
    noise = torch.Generator().manual_seed(0)
    for b in range(STEPS):
        terms = model.train_step(train_x[b * BATCH : (b + 1) * BATCH], noise, step)
        assert all(math.isfinite(float(v)) for v in terms.values())
    after = held_out()

    if family == "gan":
        assert before["d_loss"] > 1.2  # an untrained D is near chance: 2 ln 2 = 1.386
        assert after["d_loss"] < before["d_loss"] - 0.2, (before, after)
        assert after["d_acc"] > 0.9, (before, after)
    else:
        key = "recon" if family == "aae" else "loss"
        assert after[key] < 0.95 * before[key], (before, after)


def test_a_registered_arch_serves_every_family_and_an_unknown_one_is_named():
    from torch import nn

    from bigmodel.errors import ConfigError
    from bigmodel.models import nets
    from bigmodel.models.registry import create_model, families

    def encoder(shape, out, hidden, width, leaky=False):
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], out))

    def decoder(latent, shape, hidden, width, batchnorm=False):
        return nn.Sequential(nn.Linear(latent, shape[0] * shape[1] * shape[2]), nn.Unflatten(1, shape))

    nets.register_arch(nets.Arch("linear-test", encoder, decoder))
    try:
        for family in families():
            model = create_model(family, "linear-test")
            image_roles = [r for r, io in model.roles.items() if io.inputs[0][1] == "image"]
            assert image_roles
            for role in image_roles:  # the image-side networks are the registered ones: no activation inside
                assert not any(isinstance(m, (nn.ReLU, nn.LeakyReLU)) for m in model.role_module(role).modules())
    finally:
        nets._ARCHS.pop("linear-test")
    with pytest.raises(ConfigError, match="unknown arch 'linear-test'; expected one of: mlp, conv"):
        create_model("vae", "linear-test")
