"""sha256 of a file, streamed: what manifests record and loaders verify. Standard library only (hashlib),
so the runtime can check bundle files without importing the writers' modules (tempfile, shutil)."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at `path`, read `chunk` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
