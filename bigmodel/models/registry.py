"""A timm-style model registry: `@register_model` on a family class, `create_model`, `list_models`.

The families register when `bigmodel.models` is imported (its __init__ imports each family module);
architectures register in `nets.py` (`register_arch`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bigmodel.errors import ConfigError
from bigmodel.manifest import DataSpec
from bigmodel.models.nets import archs, get_arch

__all__ = ["archs", "create_model", "families", "family_class", "list_models", "make_config", "register_model"]

_REGISTRY: dict[str, type] = {}

# What `create_model` assumes when no data spec is given: one MNIST digit.
MNIST_SPEC = DataSpec(source="mnist-5k", shape=(1, 28, 28))


@dataclass(frozen=True)
class ModelInfo:
    family: str
    arch: str
    roles: tuple[str, ...]
    description: str


def register_model(cls: type) -> type:
    """Class decorator: registers a family under `cls.family`."""
    _REGISTRY[cls.family] = cls
    return cls


def families() -> list[str]:
    return sorted(_REGISTRY)


def family_class(family: str) -> type:
    if family not in _REGISTRY:
        raise ConfigError(f"unknown model family {family!r}; expected one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[family]


def list_models() -> list[ModelInfo]:
    """Every registered (family, arch) pair, e.g. `[ModelInfo("aae", "mlp", ...), ...]`."""
    return [
        ModelInfo(f, a, tuple(family_class(f).roles), family_class(f).description)
        for f in families()
        for a in archs()
    ]


def make_config(family: str, **cfg: Any) -> Any:
    """The family's config dataclass from keyword values; unknown keys or bad values raise ConfigError."""
    config_cls = family_class(family).config_cls
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise ConfigError(f"{family} has no setting {', '.join(unknown)}; expected some of: {', '.join(sorted(names))}")
    config = config_cls(**cfg)
    config.validate()
    return config


def create_model(family: str, arch: str = "mlp", data: DataSpec | None = None, **cfg: Any):
    """Build a family's model for `data` (default: 28x28 grayscale digits).

    >>> model = create_model("vae", arch="conv", latent_dim=16)
    """
    cls = family_class(family)
    get_arch(arch)  # an unknown arch is a ConfigError naming the registered ones
    return cls(arch, data or MNIST_SPEC, make_config(family, **cfg))


def describe_models() -> list[dict[str, Any]]:
    """`bigmodel models --json`: per (family, arch) its roles, latent size, description and default settings."""
    rows = []
    for info in list_models():
        defaults = family_class(info.family).config_cls()
        rows.append({"family": info.family, "arch": info.arch, "roles": list(info.roles),
                     "latent_dim": defaults.latent_dim, "description": info.description,
                     "settings": {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}})
    return rows
