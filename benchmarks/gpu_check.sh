#!/usr/bin/env bash
# The project's one GPU check (see GPU.md). Run from anywhere on a machine with an NVIDIA GPU:
#
#     bash benchmarks/gpu_check.sh OUT_DIR [BUNDLE]
#
# OUT_DIR receives: gpu_check.log (everything printed), doctor.json, pytest_gpu.txt,
# bench_cuda.json + bench_cuda.png (copies included), bench_cuda_nocopies.json.
# BUNDLE (default runs/gpu/bundle) is a bundle trained and exported on a CPU machine and carried
# along, with its run's checkpoint.pt beside it (BUNDLE/../checkpoint.pt) for the torch baseline:
#
#     bigmodel train vae --epochs 5 --out runs/gpu && bigmodel export runs/gpu
#
# The GPU image has torch, so the project is installed without dependencies; whatever else
# bigmodel imports and is missing comes from a wheels/ folder carried along when there is one
# (pip install --no-index --find-links wheels ...), else from the package index if reachable.
# An onnxruntime_gpu wheel in wheels/ replaces the CPU onnxruntime. Exit status: non-zero when
# the GPU tests or the bench failed; missing optional pieces are reported, not fatal.
set -u

if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [BUNDLE]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=${2:-runs/gpu/bundle}
case "$BUNDLE" in /*) ;; *) BUNDLE="$PWD/$BUNDLE" ;; esac
PY=${PYTHON:-python3}
cd "$ROOT" || exit 2
exec > >(tee "$OUT/gpu_check.log") 2>&1
status=0

section() { printf '\n==== %s\n' "$*"; }

section "nvidia-smi"
nvidia-smi || echo "nvidia-smi failed or is absent"

section "ldconfig -p | grep nvinfer"
ldconfig -p 2>/dev/null | grep nvinfer || echo "no libnvinfer in the linker cache"

section "python -c 'import tensorrt'"
"$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || echo "import tensorrt failed"

section "install bigmodel (no dependencies: the image has torch)"
FIND=()
if [ -d "$ROOT/wheels" ]; then
    FIND=(--find-links "$ROOT/wheels")
    echo "wheels carried along:"; ls "$ROOT/wheels"
fi
"$PY" -m pip install --no-deps --no-build-isolation -e "$ROOT" \
    || { echo "could not install bigmodel in editable mode; running from the source tree"; export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"; }

# module to import -> package that brings it
need=()
for spec in numpy:numpy typer:typer rich:rich onnx:onnx onnxscript:onnxscript onnxslim:onnxslim \
            onnxruntime:onnxruntime mlxtend:mlxtend PIL:pillow matplotlib:matplotlib pytest:pytest; do
    mod=${spec%%:*}
    pkg=${spec##*:}
    "$PY" -c "import $mod" 2>/dev/null || need+=("$pkg")
done
if ls "$ROOT"/wheels/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
    echo "an onnxruntime-gpu wheel was carried along: it replaces onnxruntime"
    "$PY" -m pip uninstall -y onnxruntime >/dev/null 2>&1
    "$PY" -m pip install --no-index "${FIND[@]}" onnxruntime-gpu || echo "onnxruntime-gpu did not install"
    kept=()
    for pkg in ${need[@]+"${need[@]}"}; do [ "$pkg" = onnxruntime ] || kept+=("$pkg"); done
    need=(${kept[@]+"${kept[@]}"})
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "missing, installing: ${need[*]}"
    if [ ${#FIND[@]} -gt 0 ]; then
        "$PY" -m pip install --no-index "${FIND[@]}" "${need[@]}" \
            || "$PY" -m pip install "${need[@]}" || echo "could not install all of: ${need[*]}"
    else
        "$PY" -m pip install "${need[@]}" || echo "could not install all of: ${need[*]}"
    fi
else
    echo "numpy, typer, rich, onnx, onnxscript, onnxslim, onnxruntime, mlxtend, pillow, matplotlib, pytest: present"
fi

section "bigmodel doctor"
"$PY" -m bigmodel doctor || true
"$PY" -m bigmodel doctor --json > "$OUT/doctor.json" || true

section "pytest -m gpu"
"$PY" -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.txt"
rc=${PIPESTATUS[0]}
case $rc in
    0) echo "GPU tests passed" ;;
    5) echo "no GPU test was collected" ;;
    *) echo "GPU tests FAILED (pytest exit $rc)"; status=1 ;;
esac

section "bigmodel bench --device cuda"
BACKENDS=$("$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(",".join(b["name"] for b in d.get("backends", []) if b["ok"]))' "$OUT/doctor.json" 2>/dev/null)
BACKENDS=${BACKENDS:-torch,torch-cudagraph,ort-cuda,ort-trt,tensorrt}
echo "backends present: $BACKENDS"
if [ ! -f "$BUNDLE/manifest.json" ]; then
    echo "no bundle at $BUNDLE (pass one as the second argument; train and export it on a CPU machine first)"
    status=1
else
    "$PY" -m bigmodel bench "$BUNDLE" --device cuda --backends "$BACKENDS" \
        --json "$OUT/bench_cuda.json" --plot "$OUT/bench_cuda.png" || { echo "bench FAILED"; status=1; }
    "$PY" -m bigmodel bench "$BUNDLE" --device cuda --backends "$BACKENDS" --no-copies --duration 0.5 \
        --json "$OUT/bench_cuda_nocopies.json" || { echo "bench --no-copies FAILED"; status=1; }
fi

section "done (status $status); files in $OUT"
ls -l "$OUT"
exit $status
