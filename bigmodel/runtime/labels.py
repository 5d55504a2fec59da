"""Calls of roles fed more than one input: an image or code input with class labels (conditional models).

The methods of `Model` feed a role its one image or code input (`main`) and, where it has one, its
class-label input; `labelled_call` is that call with labels (one id for all, or one per sample),
`refusal` the call of a role whose inputs the methods cannot fill (it says what to pass instead).
"""

from __future__ import annotations

import numpy as np

from bigmodel.errors import InputError
from bigmodel.runtime.checks import F32, Input, check_finite_output


def main_inputs(inputs: list[Input]) -> tuple[Input, Input | None] | None:
    """(the image or code input, the class-label input or None) of a role the methods can feed, else None."""
    labels = [i for i in inputs if i.kind == "label"]
    rest = [i for i in inputs if i.kind != "label"]
    if len(rest) != 1 or len(labels) > 1:
        return None
    return rest[0], (labels[0] if labels else None)


def refusal(role: str, inputs: list[Input], main: tuple[Input, Input | None] | None):
    """A call for `role` without labels that raises: a conditional role needs labels, a role with several
    other inputs needs `run`."""
    if main is not None and main[1] is not None:
        n = f" on {main[1].classes} classes" if main[1].classes else ""
        message = (f"this bundle's {role} is conditional{n}: pass labels= (one class id for every sample, or an "
                   "integer array of shape (batch,))")
    else:
        message = (f"this bundle's {role} takes several inputs ({', '.join(i.name for i in inputs)}); call "
                   f"run({role!r}, {{...}}) with each of them")

    def refuse(x=None, labels=None):
        raise InputError(message)

    return refuse


def labelled_call(role: str, outputs: list[str], names: tuple[str, ...], main: Input, label: Input | None,
                  execute, check_values: bool, what: str):
    """`call(x, labels)` -> the outputs `names` of `role` as float32, x in its main input and labels in its
    label input; execute(arrays) -> every output. Outputs are checked finite where the main input is not
    range-bounded (codes), as the single-input calls do."""
    if label is None:
        def no_labels(x, labels):
            raise InputError(f"{what}: this bundle's {role} takes no labels (it is not conditional); "
                             f"got labels={labels!r:.60}")
        return no_labels
    pick = [outputs.index(n) for n in names]
    check = check_values and main.lo is None

    def call(x, labels) -> tuple[np.ndarray, ...]:
        xs = main.prepare(x)
        if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
            labels = np.full(len(xs), labels, label.dtype)  # one class for the whole batch
        ys = label.prepare(labels)
        if len(ys) != len(xs):
            raise InputError(f"{label.what}: expected {len(xs)} labels, one per {main.kind} (or one int for all); "
                             f"got {len(ys)}")
        outs = execute({main.name: xs, label.name: ys})
        return tuple(_float32(outs[i], f"{role} output {outputs[i]!r}", check) for i in pick)

    return call


def _float32(out: np.ndarray, what: str, check: bool) -> np.ndarray:
    out = out if out.dtype == F32 else out.astype(F32)
    return check_finite_output(out, what) if check else out
