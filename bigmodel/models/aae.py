"""Adversarial autoencoder (Makhzani et al., 2015): no KL term; a discriminator on latent codes.

Per mini-batch, from one encoder pass z = E(x): (1) an autoencoder step on reconstruction +
adv_weight * BCE(D(z), 1), the encoder acting as the generator; (2) a discriminator step, prior
samples labelled 1 and the same codes z (detached) labelled 0. Roles: `encoder` x -> z, `decoder`
z -> x̂, `discriminator` z -> logit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bigmodel.errors import ConfigError
from bigmodel.manifest import LatentSpec
from bigmodel.models import nets
from bigmodel.models.base import (
    GAN_BETAS,
    IMAGE_IN,
    IMAGE_OUT,
    LATENT_IN,
    BaseConfig,
    Decode,
    GenerativeModel,
    RoleIO,
    StepFn,
    adam,
    bce_const,
    bce_logits_sum,
)
from bigmodel.models.registry import register_model

PRIORS = ("normal", "mixture")
MIXTURE_COMPONENTS = 10
MIXTURE_RADIUS = 2.0
MIXTURE_STD = 0.5


@dataclass
class AAEConfig(BaseConfig):
    latent_dim: int = 8
    prior: str = "normal"
    disc_hidden: tuple[int, ...] = (256, 256)
    adv_lr: float = 2e-4  # the discriminator's
    # Weight of the encoder's adversarial term beside the reconstruction (nats summed per image). One
    # joint step instead of separate reconstruction and regularisation steps (mnist-5k, 20 epochs, batch
    # 100, seeds 0/1): FID 167/152 at weight 3, 173/196 at 10, 240 at 1 (seed 0), against 204 for the
    # three-step scheme at ~1.45x this CPU time (benchmarks/quality_vs_peers.py, the one-net protocol before
    # issue 23; under two nets x two held-out references it beats pythae's AAE in every cell: docs/quality.md).
    adv_weight: float = 3.0

    def validate(self) -> None:
        super().validate()
        if not self.adv_weight >= 0 or not math.isfinite(self.adv_weight):
            raise ConfigError(f"adv_weight must be a number >= 0; got {self.adv_weight!r}")
        if self.prior not in PRIORS:
            raise ConfigError(f"prior must be one of {', '.join(PRIORS)}; got {self.prior!r}")

    def to_dict(self):
        d = super().to_dict()
        d["disc_hidden"] = list(self.disc_hidden)
        return d


def mixture_means(dim: int) -> list[list[float]]:
    """10 means on a circle of radius 2, repeated in each pair of latent dims (an odd last dim stays 0).

    The 2-D mixture of Makhzani et al. generalised: component k sits at angle 2*pi*k/10 in every
    (2j, 2j+1) plane, scaled so each mean has norm 2.
    """
    pairs = dim // 2
    means = []
    for k in range(MIXTURE_COMPONENTS):
        angle = 2 * math.pi * k / MIXTURE_COMPONENTS
        r = MIXTURE_RADIUS / math.sqrt(max(pairs, 1))
        row = [r * math.cos(angle), r * math.sin(angle)] * pairs + [0.0] * (dim % 2)
        if dim == 1:
            row = [MIXTURE_RADIUS * math.cos(angle)]
        means.append(row)
    return means


@register_model
class AAE(GenerativeModel):
    family = "aae"
    description = "adversarial autoencoder: encoder, decoder, discriminator on codes; prior normal|mixture"
    config_cls = AAEConfig
    roles = {
        "encoder": RoleIO(IMAGE_IN, (("z", "latent"),)),
        "decoder": RoleIO(LATENT_IN, IMAGE_OUT),
        "discriminator": RoleIO(LATENT_IN, (("logit", "logit"),)),
    }

    def __init__(self, arch, data, config: AAEConfig):
        super().__init__(arch, data, config)
        c = config
        self.encoder = nets.encoder(arch, data.shape, c.latent_dim, c.hidden, c.width)
        self.decoder = nets.decoder(arch, c.latent_dim, data.shape, c.hidden, c.width)
        self.discriminator = nets.mlp([c.latent_dim, *c.disc_hidden, 1], lambda: torch.nn.LeakyReLU(0.2))
        self.register_buffer("means", torch.tensor(mixture_means(c.latent_dim)), persistent=False)

    def latent_spec(self) -> LatentSpec:
        if self.config.prior == "normal":
            return LatentSpec(dim=self.config.latent_dim, prior="normal")
        params = {"means": mixture_means(self.config.latent_dim), "std": MIXTURE_STD}
        return LatentSpec(dim=self.config.latent_dim, prior="mixture", params=params)

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        if self.config.prior == "normal":
            return z
        k = torch.randint(MIXTURE_COMPONENTS, (n,), generator=generator)
        return self.means.cpu()[k] + MIXTURE_STD * z

    def optimizers(self):
        c = self.config
        return {
            "autoencoder": adam([*self.encoder.parameters(), *self.decoder.parameters()], c.lr),
            "discriminator": adam(self.discriminator.parameters(), c.adv_lr, GAN_BETAS),
        }

    def train_step(self, x: Tensor, noise, step: StepFn):
        z = self.encoder(x)  # (B, latent): one pass serves both steps
        recon = bce_logits_sum(self.decoder(z), x)
        g_loss = bce_const(self.discriminator(z), 1.0)
        step("autoencoder", recon + self.config.adv_weight * g_loss)
        z_prior = self.prior(len(x), noise).to(x.device)
        d_loss = bce_const(self.discriminator(z_prior), 1.0) + bce_const(self.discriminator(z.detach()), 0.0)
        step("discriminator", d_loss)  # its gradients from the autoencoder step are zeroed first
        return {"recon": recon.detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def eval_losses(self, x: Tensor, noise):
        z = self.encoder(x)
        prior_logit, code_logit = self.discriminator(self.prior(len(x), noise).to(x.device)), self.discriminator(z)
        return {
            "recon": bce_logits_sum(self.decoder(z), x),
            "d_loss": bce_const(prior_logit, 1.0) + bce_const(code_logit, 0.0),
            "g_loss": bce_const(code_logit, 1.0),
        }

    def role_module(self, role: str):
        return {"encoder": self.encoder, "decoder": Decode(self.decoder), "discriminator": self.discriminator}[role]

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))
