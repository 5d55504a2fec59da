"""What an ONNX graph is made of, read from its protobuf bytes with the standard library (no onnx package).

onnxruntime's TensorRT provider may only be told `trt_int8_enable` for graphs TensorRT itself runs
in int8: QuantizeLinear/DequantizeLinear pairs with signed int8 zero points that are all 0
(symmetric). Dynamic (MatMulInteger/ConvInteger) and weight-only (MatMulNBits) graphs are
onnxruntime's own int8 forms, which TensorRT does not take: those nodes go to other providers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ONNX TensorProto.DataType codes used here
INT8, UINT8 = 3, 2
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv")
NBITS_OPS = ("MatMulNBits",)

FORMS = ("float", "qdq-int8-symmetric", "qdq-other", "integer-ops", "matmul-nbits")


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values as memoryviews."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, wire, value
        elif wire == 1:
            yield field, wire, int.from_bytes(buf[i:i + 8], "little")
            i += 8
        elif wire == 2:
            size, i = _varint(buf, i)
            yield field, wire, buf[i:i + size]
            i += size
        elif wire == 5:
            yield field, wire, int.from_bytes(buf[i:i + 4], "little")
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _text(v) -> str:
    return bytes(v).decode("utf-8", "replace")


@dataclass
class _Tensor:
    data_type: int = 0
    values: tuple[int, ...] | None = None  # integer contents, when stored inline


def _tensor(buf: memoryview) -> tuple[str, _Tensor]:
    name, t, raw, ints = "", _Tensor(), None, []
    for field, wire, v in _fields(buf):
        if field == 2:
            t.data_type = int(v)  # type: ignore[arg-type]
        elif field == 8:
            name = _text(v)
        elif field == 9:
            raw = bytes(v)  # type: ignore[arg-type]
        elif field == 5 and wire == 2:  # packed int32_data
            j, m = 0, len(v)  # type: ignore[arg-type]
            while j < m:
                x, j = _varint(v, j)  # type: ignore[arg-type]
                ints.append(x)
        elif field == 5:
            ints.append(int(v))  # type: ignore[arg-type]
    if raw is not None and t.data_type in (INT8, UINT8):
        t.values = tuple(np.frombuffer(raw, np.int8 if t.data_type == INT8 else np.uint8).tolist())
    elif ints:
        t.values = tuple(x - (1 << 64) if x >= 1 << 63 else x for x in ints)
    return name, t


def graph_form(path: str | Path) -> str:
    """One of FORMS for the ONNX file at `path` (its main graph's nodes and initializers)."""
    data = memoryview(Path(path).read_bytes())
    graph = next((v for f, w, v in _fields(data) if f == 7 and w == 2), None)
    ops: Counter[str] = Counter()
    zero_points: list[str] = []
    inits: dict[str, _Tensor] = {}
    for field, wire, v in _fields(graph) if graph is not None else ():
        if field == 1 and wire == 2:  # NodeProto
            inputs, outputs, op, value = [], [], "", None
            for f, _w, x in _fields(v):  # type: ignore[arg-type]
                if f == 1:
                    inputs.append(_text(x))
                elif f == 2:
                    outputs.append(_text(x))
                elif f == 4:
                    op = _text(x)
                elif f == 5:  # AttributeProto: a Constant's tensor is field 5 ("t")
                    value = next((t for g, _, t in _fields(x) if g == 5), value)  # type: ignore[arg-type]
            ops[op] += 1
            if op in QDQ_OPS:
                zero_points.append(inputs[2] if len(inputs) > 2 else "")
            elif op == "Constant" and value is not None and outputs:
                inits[outputs[0]] = _tensor(value)[1]  # type: ignore[arg-type]
        elif field == 5 and wire == 2:  # initializer
            name, t = _tensor(v)  # type: ignore[arg-type]
            inits[name] = t
    return classify(ops, [inits.get(z) if z else None for z in zero_points])


def classify(ops: Counter[str] | dict[str, int], zero_points: list[_Tensor | None]) -> str:
    """The form from op counts and the QDQ nodes' zero-point tensors (None: absent or not an initializer)."""
    if any(ops.get(o) for o in NBITS_OPS):
        return "matmul-nbits"
    if any(ops.get(o) for o in INTEGER_OPS):
        return "integer-ops"
    if not any(ops.get(o) for o in QDQ_OPS):
        return "float"
    # TensorRT's explicit quantization: int8 zero points, all zero. An absent zero point means uint8.
    symmetric = all(z is not None and z.data_type == INT8 and z.values is not None and not any(z.values)
                    for z in zero_points)
    return "qdq-int8-symmetric" if symmetric else "qdq-other"
