"""Adversarial autoencoder (Makhzani et al., 2015): no KL term; a discriminator on latent codes.

Per mini-batch: (1) reconstruction step on encoder + decoder; (2) discriminator step, prior
samples labelled 1 and codes E(x) labelled 0; (3) regularisation step, the encoder as generator
with BCE(D(E(x)), 1). Roles: `encoder` x -> z, `decoder` z -> x̂, `discriminator` z -> logit.
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
    IMAGE_IN,
    IMAGE_OUT,
    LATENT_IN,
    BaseConfig,
    Decode,
    GenerativeModel,
    RoleIO,
    StepFn,
    bce_const,
    bce_logits_sum,
)
from bigmodel.models.gan import adam_gan
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
    adv_lr: float = 2e-4

    def validate(self) -> None:
        super().validate()
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
            "autoencoder": torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=c.lr),
            "discriminator": adam_gan(self.discriminator.parameters(), c.adv_lr),
            "encoder": adam_gan(self.encoder.parameters(), c.adv_lr),
        }

    def train_step(self, x: Tensor, noise, step: StepFn):
        recon = bce_logits_sum(self.decoder(self.encoder(x)), x)
        step("autoencoder", recon)
        z_prior = self.prior(len(x), noise).to(x.device)
        codes = self.encoder(x).detach()  # (B, latent)
        d_loss = bce_const(self.discriminator(z_prior), 1.0) + bce_const(self.discriminator(codes), 0.0)
        step("discriminator", d_loss)
        g_loss = bce_const(self.discriminator(self.encoder(x)), 1.0)
        step("encoder", g_loss)
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
