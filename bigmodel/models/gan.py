"""GAN: `generator` z -> x, `discriminator` x -> logit.

D: BCE(D(x), 1) + BCE(D(G(z).detach()), 0); G: the non-saturating BCE(D(G(z)), 1); logits throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
)
from bigmodel.models.registry import register_model


@dataclass
class GANConfig(BaseConfig):
    latent_dim: int = 100
    lr: float = 2e-4


def adam_gan(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


@register_model
class GAN(GenerativeModel):
    family = "gan"
    description = "GAN: generator z->x, discriminator x->logit; non-saturating loss"
    config_cls = GANConfig
    roles = {
        "generator": RoleIO(LATENT_IN, IMAGE_OUT),
        "discriminator": RoleIO(IMAGE_IN, (("logit", "logit"),)),
    }
    image_role = "generator"
    train_defaults = {"epochs": 30, "batch_size": 64}  # GANs want more, smaller steps than the autoencoders

    def __init__(self, arch, data, config: GANConfig):
        super().__init__(arch, data, config)
        c = config
        # BatchNorm in the generator's hidden layers keeps an MLP GAN from collapsing to one mode on
        # mnist-5k (without it, 20 epochs gave 64 copies of one blob).
        self.generator = nets.decoder(arch, c.latent_dim, data.shape, c.hidden, c.width, batchnorm=True)
        self.discriminator = nets.encoder(arch, data.shape, 1, c.hidden, c.width, leaky=True)

    def optimizers(self):
        lr = self.config.lr
        return {"discriminator": adam_gan(self.discriminator.parameters(), lr),
                "generator": adam_gan(self.generator.parameters(), lr)}

    def _fake(self, n: int, noise: torch.Generator, device) -> Tensor:
        return torch.sigmoid(self.generator(self.prior(n, noise).to(device)))  # (B, C, H, W) in [0, 1]

    def train_step(self, x: Tensor, noise, step: StepFn):
        fake = self._fake(len(x), noise, x.device)
        d_loss = bce_const(self.discriminator(x), 1.0) + bce_const(self.discriminator(fake.detach()), 0.0)
        step("discriminator", d_loss)
        g_loss = bce_const(self.discriminator(fake), 1.0)
        step("generator", g_loss)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def eval_losses(self, x: Tensor, noise):
        fake = self._fake(len(x), noise, x.device)
        real_logit, fake_logit = self.discriminator(x), self.discriminator(fake)
        return {
            "d_loss": bce_const(real_logit, 1.0) + bce_const(fake_logit, 0.0),
            "g_loss": bce_const(fake_logit, 1.0),
            "d_acc": 0.5 * ((real_logit > 0).float().mean() + (fake_logit < 0).float().mean()),
        }

    def role_module(self, role: str):
        return {"generator": Decode(self.generator), "discriminator": self.discriminator}[role]
