#!/usr/bin/env bash
# The project's one GPU check. Run from anywhere on a machine with an NVIDIA GPU:
#
#     bash benchmarks/gpu_check.sh OUT_DIR [BUNDLE]
#
# BUNDLE (default runs/gpu/bundle) is an fp32 bundle trained and exported on a CPU machine and carried
# along, with its run's checkpoint.pt beside it (BUNDLE/../checkpoint.pt) for the torch reference:
#
#     bigmodel train vae --epochs 5 --out runs/gpu && bigmodel export runs/gpu
#
# Steps, each a row of the table printed at the end (PASS / FAIL / SKIP with the reason):
#   install      bigmodel without dependencies (the GPU image has torch); missing modules from a
#                wheels/ folder carried along (an onnxruntime_gpu wheel there replaces onnxruntime)
#   doctor       bigmodel doctor --json (informational)
#   pytest-gpu   pytest -m gpu with BIGMODEL_REQUIRE_GPU=1: every GPU test that skips FAILS
#   engine       bigmodel export --engine (only where `import tensorrt` works): strongly typed engines
#   parity       bigmodel parity --backend all --strict: fp32 with TF32 off, no CPU fallback; ort-cuda
#                (and ort-trt, tensorrt where TensorRT exists) must run, a skip of one is a failure
#   bench        bigmodel bench --device cuda --strict, copies included, every backend present
#   polygraphy   our TensorRT runner == Polygraphy's TrtRunner on the same engines (where TensorRT exists)
# OUT_DIR receives gpu_check.log (everything printed), doctor.json, pytest_gpu.txt, parity.json,
# bench_cuda.json + .png, polygraphy.txt, summary.txt. Exit status: 1 when any step failed.
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
export BIGMODEL_REQUIRE_GPU=1
cd "$ROOT" || exit 2
exec > >(tee "$OUT/gpu_check.log") 2>&1

rows=()
failed=0
section() { printf '\n==== %s\n' "$*"; }
record() {  # record STEP STATUS DETAIL
    rows+=("$(printf '%-11s %-5s %s' "$1" "$2" "$3")")
    [ "$2" = FAIL ] && failed=1
    return 0
}

section "nvidia-smi"
nvidia-smi || echo "nvidia-smi failed or is absent"

section "ldconfig -p | grep nvinfer"
ldconfig -p 2>/dev/null | grep nvinfer || echo "no libnvinfer in the linker cache"

section "python -c 'import tensorrt'"
HAVE_TRT=0
if "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)"; then HAVE_TRT=1; else
    echo "import tensorrt failed: the engine, tensorrt and polygraphy steps are skipped"; fi

section "install bigmodel (no dependencies: the image has torch)"
FIND=()
if [ -d "$ROOT/wheels" ]; then
    FIND=(--find-links "$ROOT/wheels")
    echo "wheels carried along:"; ls "$ROOT/wheels"
fi
"$PY" -m pip install --no-deps --no-build-isolation -e "$ROOT" \
    || { echo "could not install bigmodel in editable mode; running from the source tree"; export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"; }
need=()  # module to import -> package that brings it
for spec in numpy:numpy typer:typer rich:rich onnx:onnx onnxscript:onnxscript onnxslim:onnxslim \
            onnxruntime:onnxruntime mlxtend:mlxtend PIL:pillow matplotlib:matplotlib pytest:pytest polygraphy:polygraphy; do
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
        "$PY" -m pip install --no-index "${FIND[@]}" "${need[@]}" || "$PY" -m pip install "${need[@]}" \
            || echo "could not install all of: ${need[*]}"
    else
        "$PY" -m pip install "${need[@]}" || echo "could not install all of: ${need[*]}"
    fi
fi
if "$PY" -c "import bigmodel.cli, onnxruntime, torch"; then record install PASS "bigmodel, onnxruntime, torch import"
else record install FAIL "bigmodel, onnxruntime or torch does not import"; fi

section "bigmodel doctor"
"$PY" -m bigmodel doctor || true
"$PY" -m bigmodel doctor --json > "$OUT/doctor.json" || true
ask() { "$PY" "$ROOT/benchmarks/gpu_check_json.py" "$@" 2>/dev/null; }
record doctor INFO "$(ask doctor "$OUT/doctor.json")"

section "pytest -m gpu (BIGMODEL_REQUIRE_GPU=1: a skipped GPU test fails)"
# -o addopts="": one process (one GPU; the image may lack pytest-xdist, which the default options use)
"$PY" -m pytest -o addopts="" -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.txt"
rc=${PIPESTATUS[0]}
case $rc in
    0) record pytest-gpu PASS "$(tail -n 1 "$OUT/pytest_gpu.txt")" ;;
    *) record pytest-gpu FAIL "pytest exit $rc: $(tail -n 1 "$OUT/pytest_gpu.txt")" ;;
esac

PARITY_BUNDLE=$BUNDLE
if [ ! -f "$BUNDLE/manifest.json" ]; then
    record bundle FAIL "no bundle at $BUNDLE (train and export one on a CPU machine, pass it as the second argument)"
else
    section "bigmodel export --engine"
    if [ $HAVE_TRT = 1 ]; then
        if "$PY" -m bigmodel export "$BUNDLE/.." --engine --out "$OUT/bundle_engine" --force --max-batch 1024; then
            PARITY_BUNDLE=$OUT/bundle_engine
            record engine PASS "strongly typed engines in $PARITY_BUNDLE/engines"
        else
            record engine FAIL "export --engine failed (see the log)"
        fi
    else
        record engine SKIP "import tensorrt failed here"
    fi

    section "bigmodel parity --backend all --strict"
    "$PY" -m bigmodel parity "$PARITY_BUNDLE" --backend all --strict --json "$OUT/parity.json"
    rc=$?
    required="ort-cuda"
    [ $HAVE_TRT = 1 ] && required="ort-cuda,ort-trt,tensorrt"
    skipped=$(ask parity-skips "$OUT/parity.json" "$required")
    if [ $rc -ne 0 ]; then record parity FAIL "exit $rc (see the log and parity.json)"
    elif [ -n "$skipped" ]; then record parity FAIL "required GPU backend skipped: $skipped"
    else record parity PASS "$(ask parity-ran "$OUT/parity.json")"
    fi

    section "bigmodel bench --device cuda --strict"
    if "$PY" -m bigmodel bench "$PARITY_BUNDLE" --device cuda --strict --batch-sizes 1,64,1024 \
            --json "$OUT/bench_cuda.json" --plot "$OUT/bench_cuda.png"; then
        bench_skips=$(ask bench-skips "$OUT/bench_cuda.json" "$required,torch,torch-cudagraph")
        if [ -n "$bench_skips" ]; then record bench FAIL "required backend skipped: $bench_skips"
        else record bench PASS "bench_cuda.json, bench_cuda.png"; fi
    else
        record bench FAIL "bench exited non-zero"
    fi

    section "our TensorRT runner vs Polygraphy's TrtRunner"
    if [ $HAVE_TRT = 1 ] && [ "$PARITY_BUNDLE" != "$BUNDLE" ]; then
        if "$PY" benchmarks/trt_vs_polygraphy.py "$PARITY_BUNDLE" | tee "$OUT/polygraphy.txt"; then
            record polygraphy PASS "$(tail -n 1 "$OUT/polygraphy.txt")"
        else
            record polygraphy FAIL "$(tail -n 1 "$OUT/polygraphy.txt")"
        fi
    else
        record polygraphy SKIP "no TensorRT engines here"
    fi
fi

section "summary"
{
    printf '%-11s %-5s %s\n' step result detail
    for row in "${rows[@]}"; do printf '%s\n' "$row"; done
} | tee "$OUT/summary.txt"
echo "files in $OUT"
exit $failed
