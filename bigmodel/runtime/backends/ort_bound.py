"""Small-batch calls on onnxruntime's CPU provider through an IOBinding with output buffers bound once.

At batch 1 a plain `run` spends a few microseconds of its ~40 converting the output name list and
feed dict and allocating fresh outputs. Binding the outputs to numpy buffers once per batch size
(the shapes repeat: every output axis but the batch is fixed) and copying them out is cheaper, and
the caller still gets arrays of its own. One binding set serves one call at a time: a call that
finds it busy (another thread) takes the plain path instead, so sessions stay shareable.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

BIND_MAX_BYTES = 1 << 18  # bind when a call's outputs total at most 256 KiB (past that the copy costs more)
MAX_BATCHES = 8  # binding sets kept per runner (one per batch size seen)
ALIGN = 16  # float32 values: staged slots start on 64-byte boundaries
ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def output_layout(session, outputs: list[str]) -> list[tuple[tuple[int, ...], np.dtype]] | None:
    """(per-sample shape, dtype) of each named output, or None unless every axis but the first is fixed."""
    meta = {o.name: o for o in session.get_outputs()}
    layout = []
    for name in outputs:
        o = meta.get(name)
        dtype = ORT_FLOAT_TYPES.get(getattr(o, "type", None))
        shape = list(getattr(o, "shape", None) or ())
        if dtype is None or not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return None
        layout.append((tuple(shape[1:]), np.dtype(dtype)))
    return layout


def bound_run(session, outputs: list[str], plain, run_options):
    """feeds -> [outputs] like `plain`, through pre-bound output buffers for batches whose outputs are small.

    Returns `plain` itself where binding does not apply (outputs without a fixed per-sample shape,
    or an onnxruntime without the compiled IOBinding calls). `run_options`: one onnxruntime RunOptions
    made at load (passing None makes onnxruntime build a default one per call).
    """
    layout = output_layout(session, outputs)
    sess = getattr(session, "_sess", None)
    run_bound = getattr(sess, "run_with_iobinding", None)
    if layout is None or run_bound is None or not hasattr(session, "io_binding"):
        return plain
    if not hasattr(getattr(session.io_binding(), "_iobinding", None), "bind_input"):
        return plain  # an onnxruntime whose IOBinding internals differ: the plain path, never a failure
    per_sample = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in layout)
    max_batch = BIND_MAX_BYTES // max(1, per_sample)
    sets: dict[int, tuple] = {}  # batch -> (bind_input, raw binding, [bound buffers], IOBinding)
    lock = threading.Lock()
    single = len(outputs) == 1
    n_cur, bind, raw, bufs = 0, None, None, []  # the binding set of the last batch size (cell variables: fast)

    def binding(n: int) -> tuple:
        io = session.io_binding()
        made = [np.empty((n, *shape), dtype) for shape, dtype in layout]
        for name, buf in zip(outputs, made, strict=True):
            io.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        if len(sets) >= MAX_BATCHES:
            sets.pop(next(iter(sets)))
        sets[n] = entry = (io._iobinding.bind_input, io._iobinding, made, io)  # io keeps the buffers' binding alive
        return entry

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        nonlocal n_cur, bind, raw, bufs
        if not lock.acquire(blocking=False):
            return plain(feeds)
        try:
            for x in feeds.values():
                if len(x) != n_cur:
                    if len(x) > max_batch:
                        return plain(feeds)
                    bind, raw, bufs, _ = sets.get(len(x)) or binding(len(x))
                    n_cur = len(x)
                break
            for name, x in feeds.items():
                bind(name, x)  # no copy: the Model hands over C-contiguous arrays of the graph's dtype
            run_bound(raw, run_options)
            # the buffers are reused by the next call: the caller gets its own
            return [bufs[0].copy()] if single else [b.copy() for b in bufs]
        finally:
            lock.release()

    return run


@functools.lru_cache(maxsize=1)
def _zeros() -> np.ndarray:
    """Read-only float32 zeros, enough for any staged arena (made at the first binding, shared by all)."""
    z = np.zeros(BIND_MAX_BYTES // 4 + 64 * ALIGN, np.float32)
    z.flags.writeable = False
    return z


def zeros_of(size: int) -> np.ndarray:
    """`size` float32 zeros: a view of the shared block when it is large enough."""
    z = _zeros()
    return z[:size] if size <= z.size else np.zeros(size, np.float32)


def staged_run(session, input_name: str, outputs: list[str], run_options):
    """x -> [outputs], or None; input and outputs bound once per batch size in one float32 arena.

    For single-input float32 roles (codes -> images) on small batches: the caller's array (C-contiguous
    float32, the shape the graph takes: checked by the caller) is copied into the bound input slot,
    the session runs on bindings made once, and the outputs are copied out. One dot product of the
    whole arena with zeros (0 unless a value is NaN or Inf: 0 * Inf = NaN) tells whether the input
    and every output were finite, in one numpy call instead of one per array; `np.vdot`, unlike
    `dot`, does not turn the floating-point flag of 0 * Inf into a RuntimeWarning. None means "not done
    here": the batch is too large, another thread holds the bindings, or a value was not finite; the
    caller then takes its general path, which checks the input before running and explains. Returns None
    (no staged runner) where this does not apply: non-float32 tensors, outputs without a fixed
    per-sample shape, or an onnxruntime without the compiled IOBinding calls.
    """
    layout = output_layout(session, outputs)
    meta = {i.name: i for i in session.get_inputs()}.get(input_name)
    tail = list(getattr(meta, "shape", None) or ())[1:]
    sess = getattr(session, "_sess", None)
    run_bound = getattr(sess, "run_with_iobinding", None)
    if (layout is None or any(dtype != np.float32 for _, dtype in layout) or getattr(meta, "type", None)
            != "tensor(float)" or not all(isinstance(d, int) and d > 0 for d in tail) or run_bound is None
            or not hasattr(session, "io_binding")):
        return None
    if not hasattr(getattr(session.io_binding(), "_iobinding", None), "bind_input"):
        return None
    shapes = [tuple(tail)] + [shape for shape, _ in layout]
    per_sample = [int(np.prod(s)) for s in shapes]
    max_batch = BIND_MAX_BYTES // (4 * sum(per_sample))
    sets: dict[int, tuple] = {}  # batch -> (arena, zeros, input view, [output views], raw binding, IOBinding)
    lock = threading.Lock()
    copyto, vdot, isfinite = np.copyto, np.vdot, math.isfinite
    single = len(outputs) == 1
    n_cur, arena, zeros, slot, bufs, raw = 0, None, None, None, [], None  # the last batch size's set (cells: fast)

    def binding(n: int) -> tuple:
        sizes = [n * p for p in per_sample]
        starts = np.cumsum([0] + [-(-s // ALIGN) * ALIGN for s in sizes])  # each slot on a 64-byte boundary
        room = np.zeros(int(starts[-1]), np.float32)  # the padding stays 0: it never fails the dot check
        views = [room[a:a + s].reshape(n, *shape) for a, s, shape in zip(starts, sizes, shapes, strict=False)]
        io = session.io_binding()
        io.bind_input(input_name, "cpu", 0, np.float32, list(views[0].shape), views[0].ctypes.data)
        for name, buf in zip(outputs, views[1:], strict=True):
            io.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        if len(sets) >= MAX_BATCHES:
            sets.pop(next(iter(sets)))
        sets[n] = entry = (room, zeros_of(room.size), views[0], views[1:], io._iobinding, io)
        return entry

    def run(x: np.ndarray) -> list[np.ndarray] | None:
        nonlocal n_cur, arena, zeros, slot, bufs, raw
        n = len(x)
        if n > max_batch or not lock.acquire(blocking=False):
            return None
        try:
            if n != n_cur:
                arena, zeros, slot, bufs, raw, _ = sets.get(n) or binding(n)
                n_cur = n
            copyto(slot, x)
            run_bound(raw, run_options)
            if not isfinite(vdot(arena, zeros)):
                return None
            # the arena is reused by the next call: the caller gets arrays of its own
            return [bufs[0].copy()] if single else [b.copy() for b in bufs]
        finally:
            lock.release()

    return run
