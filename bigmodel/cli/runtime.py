"""`bigmodel sample`, `encode`, `decode`, `info`: on bigmodel.runtime (numpy + onnxruntime or TensorRT), never torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel import tables
from bigmodel.cli.app import BackendOpt, BundleArg, DeviceOpt, FallbackOpt, ThreadsOpt, _check_outputs, app


def _runtime_model(bundle: Path, backend: str, device: str, threads: int | None, fallback: bool):
    from bigmodel.runtime import load

    return load(bundle, backend=backend, device=device, threads=threads, fallback=fallback)


def _read_npy(path: Path):
    import numpy as np

    from bigmodel.errors import InputError
    from bigmodel.limits import check_npy

    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a .npy file")
    if not path.is_file():
        raise InputError(f"{path}: expected a .npy file; it does not exist")
    check_npy(path)  # a broken header, or one declaring more than memory holds, before any allocation
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: expected a .npy array file; got {type(e).__name__}: {e}") from e


def _write_npy(path: Path, array) -> None:
    import numpy as np

    from bigmodel.fileio import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def _save_images(path: Path, images, manifest, ncol: int = 8) -> None:
    """A PNG grid of images in the bundle's data range (mapped to [0, 1] for the picture)."""
    from bigmodel.images import save_grid

    lo, hi = manifest.data.value_range
    save_grid(path, (images - lo) / (hi - lo) if (lo, hi) != (0.0, 1.0) else images, ncol=ncol)


SAMPLE_MAX = 10_000  # images in one PNG grid


LabelOpt = Annotated[
    int | None, typer.Option("--label", help="A conditional model's class id, for every image.")
]


@app.command("sample")
def sample_cmd(
    bundle: BundleArg,
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples.")] = 64,
    seed: Annotated[
        int | None, typer.Option(help="Seed of numpy's Generator for the prior codes (same seed, same images).")
    ] = 0,
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("samples.png"),
    npy: Annotated[
        Path | None, typer.Option("--npy", help="Also write the images, (n, C, H, W) float32, to this .npy.")
    ] = None,
    latents: Annotated[
        Path | None, typer.Option("--latents", help="Also write the prior codes (n, latent) to this .npy.")
    ] = None,
    ncol: Annotated[int, typer.Option(help="Images per row of the grid.")] = 8,
    label: LabelOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    fallback: FallbackOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
) -> None:
    """Draw n images from the bundle's prior and save them as a PNG grid (no torch needed).

    Example: bigmodel sample runs/vae/bundle -n 64 --seed 0 --out grid.png
    """
    from bigmodel.errors import InputError
    from bigmodel.limits import check_count, check_threads
    from bigmodel.runtime.checks import SEED_MAX

    if ncol < 1:
        raise InputError(f"--ncol must be >= 1; got {ncol}")
    if n < 1:
        raise InputError(f"-n must be a positive integer; got {n}")
    if n > SAMPLE_MAX:
        raise InputError(
            f"-n must be at most {SAMPLE_MAX:,} (one PNG grid); got {n:,} (draw more with the Python "
            "API: bigmodel.runtime.load(BUNDLE).sample(n))"
        )
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be an integer from 0 to 2**63-1; got {seed}")
    check_count(ncol, "--ncol", SAMPLE_MAX, why="a grid holds at most -n's bound of images")
    check_threads(threads)
    _check_outputs(
        force,
        (out, "sample grid", (".png",), "--out"),
        (npy, "images", (".npy",), "--npy"),
        (latents, "latent codes", (".npy",), "--latents"),
        reads=(bundle,),
    )
    model = _runtime_model(bundle, backend, device, threads, fallback)
    z = model.sample_latent(n, seed=seed)
    # a conditional model without --label: uniform class labels from the same seed, as Model.sample draws them
    labels = label if label is not None or model.classes is None else model.sample_labels(n, seed)
    images = model.decode(z) if labels is None else model.decode(z, labels=labels)
    _save_images(out, images, model.manifest, ncol)
    if npy:
        _write_npy(npy, images)
    if latents:
        _write_npy(latents, z)
    ui.print_sampled(ui.console(), [p for p in (out, npy, latents) if p], n, model, seed)


@app.command("encode")
def encode_cmd(
    bundle: BundleArg,
    images: Annotated[
        Path, typer.Argument(help=".npy of images (N, C, H, W) or one (C, H, W): uint8, or float in range.")
    ],
    out: Annotated[Path, typer.Option("--out", help=".npy to write the codes (N, latent) float32 to.")],
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    fallback: FallbackOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
) -> None:
    """Encode images to latent codes (a VAE gives the mean of q(z|x)); .npy in, .npy out.

    Example: bigmodel encode runs/vae/bundle images.npy --out z.npy
    """
    _check_outputs(force, (out, "codes", (".npy",), "--out"), reads=(bundle,))
    model = _runtime_model(bundle, backend, device, threads, fallback)
    codes = model.encode(_read_npy(images))
    _write_npy(out, codes)
    ui.print_encoded(ui.console(), out, codes, model)


@app.command("decode")
def decode_cmd(
    bundle: BundleArg,
    codes: Annotated[Path, typer.Argument(help=".npy of latent codes (N, latent) or one (latent,).")],
    out: Annotated[Path, typer.Option("--out", help=".npy to write the images (N, C, H, W) float32 to.")],
    png: Annotated[Path | None, typer.Option("--png", help="Also save the images as a PNG grid.")] = None,
    label: LabelOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    fallback: FallbackOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
) -> None:
    """Decode latent codes to images in the data range; .npy in, .npy (and optionally PNG) out.

    Example: bigmodel decode runs/vae/bundle z.npy --out x.npy --png x.png
    """
    _check_outputs(force, (out, "images", (".npy",), "--out"), (png, "image grid", (".png",), "--png"),
                   reads=(bundle,))
    model = _runtime_model(bundle, backend, device, threads, fallback)
    images = model.decode(_read_npy(codes)) if label is None else model.decode(_read_npy(codes), labels=label)
    _write_npy(out, images)
    if png:
        _save_images(png, images, model.manifest)
    ui.print_decoded(ui.console(), out, png, images, model)


@app.command("info")
def info_cmd(
    bundle: BundleArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Describe a bundle: roles and their shapes, precision, prior, engines, versions, file checks, backends.

    Example: bigmodel info runs/vae/bundle --json
    """
    import json

    from bigmodel.errors import BundleError
    from bigmodel.runtime.inspect import describe

    try:
        d = describe(bundle)
        if json_out:
            typer.echo(json.dumps(d, indent=2, default=str))
        else:
            tables.print_info(ui.console(), bundle, d)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:  # values not of the manifest's types
        raise BundleError(f"bundle {bundle}: its manifest.json holds values of the wrong kind ({type(e).__name__}: "
                          f"{str(e)[:200]})") from e
    _info_verdict(bundle, d)


def _info_verdict(bundle: Path, d: dict) -> None:
    """Exit 1 (after the table) when a file the manifest names is missing, altered or outside the bundle."""
    from bigmodel.errors import CheckFailed

    bad = [f"role {k}: {r['file']} {r['check']}" for k, r in d["roles"].items() if r["check"] != "ok"]
    bad += [f"engine of {e['role']}: {e['file']} {e['check']}" for e in d["engines"] if e["check"] != "ok"]
    if bad:
        raise CheckFailed(f"bundle {bundle} is damaged: {'; '.join(bad)} (re-export it)")
