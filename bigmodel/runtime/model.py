"""`Model`: the methods an application calls, on top of any backend; numpy in, numpy out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigmodel.errors import InputError
from bigmodel.manifest import Manifest
from bigmodel.runtime import priors
from bigmodel.runtime.checks import prepare

# method -> the role it needs; a family without that role does not offer the method
METHOD_ROLES = {"encode": "encoder", "reconstruct": "encoder", "discriminate": "discriminator"}
IMAGE_ROLES = ("decoder", "generator")


class Model:
    """A loaded bundle. Use `bigmodel.runtime.load` to make one.

    >>> m = load("runs/vae/bundle")
    >>> m.decode(m.sample_latent(4, seed=0)).shape
    (4, 1, 28, 28)
    """

    def __init__(self, path: Path, manifest: Manifest, backend):
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self._image_role = next(r for r in IMAGE_ROLES if r in manifest.roles)
        self._inputs = {role: spec.inputs[0] for role, spec in manifest.roles.items()}

    # -- description ----------------------------------------------------------------------------
    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.manifest.roles)

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent.dim

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return self.manifest.data.shape

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        m = self.manifest
        return f"Model({m.family}/{m.arch}, roles={list(self.roles)}, {m.precision}, backend={self.backend_name})"

    # -- raw access -----------------------------------------------------------------------------
    def run(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one role graph on named inputs; checked against the manifest, batches split to fit engines."""
        if role not in self.manifest.roles:
            raise InputError(f"{self.manifest.family} bundle has no role {role!r}; it has: {', '.join(self.roles)}")
        spec = self.manifest.roles[role]
        expected = {t.name for t in spec.inputs}
        if set(feeds) != expected:
            raise InputError(f"{role}: expected inputs {sorted(expected)}; got {sorted(feeds)}")
        arrays = {t.name: prepare(t, feeds[t.name], self.manifest.data, f"{role} input {t.name!r}")
                  for t in spec.inputs}
        outs = self._run_split(role, arrays)
        return dict(zip((t.name for t in spec.outputs), outs, strict=True))

    def _run_split(self, role: str, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(arrays.values())))
        limit = self.backend.max_batch(role)
        if limit is None or n <= limit:
            return self.backend.run(role, arrays)
        parts = [self.backend.run(role, {k: v[i : i + limit] for k, v in arrays.items()}) for i in range(0, n, limit)]
        return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]

    def _one(self, role: str, x) -> list[np.ndarray]:
        """Run a single-input role on `x` and return its outputs as float32."""
        spec = self._inputs[role]
        x = prepare(spec, x, self.manifest.data, f"{role} input {spec.name!r}")
        return [np.asarray(o, dtype=np.float32) for o in self._run_split(role, {spec.name: x})]

    def _require(self, method: str) -> str:
        role = METHOD_ROLES[method]
        if role not in self.manifest.roles:
            offered = [m for m, r in METHOD_ROLES.items() if r in self.manifest.roles]
            offered += ["decode", "sample", "interpolate", "run"]
            raise InputError(f"a {self.manifest.family} bundle cannot {method} (no {role} role); "
                             f"it offers: {', '.join(offered)}")
        return role

    # -- the methods applications call ----------------------------------------------------------
    def encode(self, x) -> np.ndarray:
        """Images (B, C, H, W) float in the data range, or uint8 -> codes (B, latent); a VAE gives its mean."""
        return self._one(self._require("encode"), x)[0]

    def decode(self, z) -> np.ndarray:
        """Codes (B, latent) -> images (B, C, H, W) float32 in the data range."""
        return self._one(self._image_role, z)[0]

    def reconstruct(self, x) -> np.ndarray:
        """decode(encode(x)): for a VAE, the decoder applied to the encoder's mean."""
        return self.decode(self.encode(x))

    def sample_latent(self, n: int, seed: int | None = None) -> np.ndarray:
        """n codes from the bundle's prior (normal or mixture), (n, latent) float32."""
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n must be a positive integer; got {n!r}")
        return priors.draw(self.manifest.latent, int(n), seed)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n images from the prior: the same seed gives the same images on every backend."""
        return self.decode(self.sample_latent(n, seed))

    def interpolate(self, a, b, steps: int = 8, method: str = "linear") -> np.ndarray:
        """Decode `steps` codes from a to b (each (latent,)): linear, or slerp for Gaussian priors."""
        if method not in ("linear", "slerp"):
            raise InputError(f"method must be 'linear' or 'slerp'; got {method!r}")
        if steps < 2:
            raise InputError(f"steps must be >= 2; got {steps}")
        spec = self._inputs[self._image_role]
        a, b = (prepare(spec, v, self.manifest.data, name).astype(np.float32) for v, name in ((a, "a"), (b, "b")))
        if len(a) != 1 or len(b) != 1:
            raise InputError(f"interpolate: expected one code each for a and b; got {len(a)} and {len(b)}")
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
        if method == "slerp":
            z = priors.slerp(a[0], b[0], t)
        else:
            z = (1 - t)[:, None] * a[0] + t[:, None] * b[0]
        return self.decode(z.astype(np.float32))

    def discriminate(self, x) -> np.ndarray:
        """Discriminator logits (B, 1): of images for a GAN, of latent codes for an AAE."""
        return self._one(self._require("discriminate"), x)[0]
