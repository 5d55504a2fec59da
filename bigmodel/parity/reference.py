"""The PyTorch side of a parity check: the bundle's reference (its run's checkpoint, or the torch.export
programs it carries), as role modules and a cached reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigmodel.errors import CheckpointError
from bigmodel.manifest import Manifest


def find_checkpoint(bundle: Path, manifest: Manifest, checkpoint) -> tuple[Path, str]:
    """The checkpoint the bundle was exported from (default: beside it) and its sha256, which must match the
    manifest's; else CheckpointError."""
    from bigmodel.fileio import sha256_file

    if checkpoint is None:
        path = bundle.resolve().parent / "checkpoint.pt"
        if not path.is_file():
            raise CheckpointError(f"no checkpoint beside the bundle: expected {path}; pass --checkpoint PATH "
                                  "(the checkpoint.pt the bundle was exported from)")
    else:
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "checkpoint.pt"
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    got = sha256_file(path)
    if not manifest.checkpoint_sha256:
        raise CheckpointError(f"{bundle}/manifest.json records no checkpoint_sha256, so no checkpoint can be "
                              "matched to it; re-export the bundle")
    if got != manifest.checkpoint_sha256:
        raise CheckpointError(f"{path} is not the checkpoint this bundle was exported from: its sha256 is "
                              f"{got[:16]}..., the manifest expects {manifest.checkpoint_sha256[:16]}... "
                              "(pass --checkpoint with the right file, or re-export)")
    return path, got


def reference_modules(bundle: Path, manifest: Manifest, checkpoint=None) -> tuple[dict, str, str]:
    """The bundle's PyTorch reference as {role: module} (eval, CPU), where it came from, and its sha256.

    A bigmodel run's bundle: the checkpoint beside it (or `checkpoint`), matched by sha256. A bundle
    made from user modules: its torch.export programs, each matched to the manifest's sha256; the
    user's code is not needed. Else CheckpointError saying what the bundle lacks.
    """
    ref = manifest.reference
    if ref.kind == "torch.export" and checkpoint is None:
        from bigmodel.export.program import load_program
        from bigmodel.fileio import sha256_file

        modules = {}
        for role in manifest.roles:
            entry = ref.programs.get(role)
            if entry is None:
                raise CheckpointError(f"{bundle}/manifest.json names no torch.export program for {role}; re-export")
            path = bundle / entry.file
            if not path.is_file() or sha256_file(path) != entry.sha256:
                raise CheckpointError(f"{path}: the PyTorch reference of {role} is missing or altered (sha256 differs "
                                      "from the manifest); re-export the bundle")
            modules[role] = load_program(path, role)
        return modules, f"{bundle}/{ref.programs[next(iter(manifest.roles))].file.split('/')[0]}/ (torch.export)", ""
    if ref.kind == "none" and checkpoint is None:
        raise CheckpointError(f"{bundle} carries no PyTorch reference (manifest reference.kind 'none'), so nothing "
                              "can be compared with PyTorch; pass --checkpoint PATH or re-export with the reference")
    path, sha = find_checkpoint(bundle, manifest, checkpoint)
    from bigmodel.models.checkpoint import load_model

    model = load_model(path).float().cpu().eval()
    return {role: model.role_module(role).eval() for role in manifest.roles}, str(path), sha


class TorchReference:
    """The bundle's PyTorch reference (`reference_modules`): eval mode, CPU, float32; outputs cached per input."""

    def __init__(self, modules: dict, manifest: Manifest | None = None):
        self.modules = modules
        self.manifest = manifest  # needed by chains into several-input roles
        self.cache: dict[tuple, list[np.ndarray]] = {}

    @classmethod
    def of(cls, bundle: Path, manifest: Manifest, checkpoint=None) -> TorchReference:
        return cls(reference_modules(bundle, manifest, checkpoint)[0], manifest)

    def __call__(self, target: tuple[str, ...], key: tuple, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The target's last role's outputs on the first role's `feeds` (in the manifest's input order), cached.

        Each role module is called with its inputs in the manifest's order; a chain feeds the previous
        role's first output (a VAE's mu, as Model.reconstruct) and takes the rest by name from `feeds`.
        """
        if (target, key) not in self.cache:
            import torch

            from bigmodel.parity.feeds import chain_feeds

            manifest = self.manifest
            with torch.inference_mode():
                out = None
                for i, role in enumerate(target):
                    if i == 0:  # feeds are in the manifest's input order (probe_inputs makes them so)
                        args = [feeds[t.name] for t in manifest.roles[role].inputs] if manifest else [*feeds.values()]
                    else:
                        first = out[0] if isinstance(out, tuple) else out
                        args = list(chain_feeds(manifest.roles[role], first, feeds).values()) if manifest else [first]
                    out = self.modules[role](*[torch.as_tensor(a) for a in args])
            outs = out if isinstance(out, tuple) else (out,)
            self.cache[target, key] = [o.detach().cpu().numpy() for o in outs]
        return self.cache[target, key]

    def generate(self, role: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The role's first output on `feeds` (prior codes, and labels for a conditional one): generated images."""
        return self((role,), ("_generated", len(next(iter(feeds.values())))), feeds)[0]
