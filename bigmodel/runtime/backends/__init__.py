"""Backends run one role graph on numpy feeds: `ort` (onnxruntime) and `tensorrt` (native engines)."""

from __future__ import annotations

import re

from bigmodel.errors import InputError

DEVICE_KINDS = ("auto", "cpu", "cuda")


def parse_device(device: str | None, device_id: int | None = None) -> tuple[str, int]:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' (+ an explicit device_id) -> (kind, GPU index).

    >>> parse_device("cuda:1")
    ('cuda', 1)
    """
    text = "auto" if device is None else str(device).strip().lower()
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", text)
    if m is None or (m[2] is not None and m[1] != "cuda"):
        raise InputError(f"device must be auto, cpu, cuda or cuda:N (N a GPU index); got {device!r}")
    index = int(m[2]) if m[2] is not None else None
    if device_id is not None:
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise InputError(f"device_id must be a GPU index >= 0; got {device_id!r}")
        if index is not None and index != device_id:
            raise InputError(f"device {device!r} and device_id={device_id} name different GPUs")
        if m[1] == "cpu":
            raise InputError(f"device_id={device_id} names a GPU; got device='cpu'")
        index = device_id
    return m[1], index or 0
