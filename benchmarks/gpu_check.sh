#!/usr/bin/env bash
# One prepared GPU check: build, test against float64, compile-check and time, in one call.
#
#   bash benchmarks/gpu_check.sh          on an H100/H200: everything below, in under 8 minutes
#   bash benchmarks/gpu_check.sh --dry    on a CPU: runs every step that needs no GPU (at toy sizes) and
#                                         skips each GPU-only one with a line saying so
#
# Steps (each under its own time limit, all under one deadline; a failed or timed-out step is recorded
# and the next one runs):
#   env        python -m redone_fast.info, nvidia-smi
#   build      the project installed editable, so redone_fast._C is compiled with its CUDA kernels (GPU)
#   aot        python -m redone_fast.kernels.aot_check: every Triton variant for sm_90a and sm_80
#   gpu_tests  tests/test_gpu_real_sizes.py (each GPU backend against float64 at a Qwen3 LM head, bf16
#              and fp32; the persistent group-advantages kernel at 16k sequences and 64M tokens), the
#              precision and row-layout tests, and every cuda-* case of the op tests (GPU)
#   bench      benchmarks/record.py at the README's target shape (T=16384, H=2560, V=151936, bf16): fused
#              vs Liger, torch.compile, torch's chunked F.linear_cross_entropy, eager torch and the bare
#              GEMMs; then the row kernels and group advantages (GPU; --dry: toy CPU sizes, no compile)
# Everything lands under $OUT (default benchmarks/results/gpu_check-out): one log per step and
# gpu_check.json, the report (device, versions, commit, date, each step's status and time, test counts,
# the compile summary, the benchmark rows and ratios).
#
# With the device tool: run(command="bash benchmarks/gpu_check.sh", timeout_s=540), then copy
# $OUT/gpu_check.json to benchmarks/results/gpu_check-<device>-<date>.json and commit it.
# PYTHON picks the interpreter (default: .venv/bin/python when it exists and --dry, else python3);
# GPU_CHECK_SKIP="aot bench_rows" skips the steps it names; GPU_CHECK_DEADLINE_S moves the deadline.
# Exit status: 0 when every step that ran succeeded, 1 otherwise, 2 without a GPU and without --dry.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT="${OUT:-benchmarks/results/gpu_check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEADLINE_S="${GPU_CHECK_DEADLINE_S:-470}"  # 7 min 50 s: the report itself takes a second
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

if [ "$DRY" = 0 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PYTHON; on a CPU run: bash benchmarks/gpu_check.sh --dry" >&2
    exit 2
fi

record() {  # name status seconds note
    printf '{"step": "%s", "status": "%s", "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" "$4" >> "$STEPS"
}

skip() {  # name why
    echo "gpu_check: $1 skipped: $2"
    record "$1" skipped 0 "$2"
}

step() {  # name limit_s command...
    local name="$1" limit="$2"; shift 2
    local left=$((DEADLINE_S - SECONDS))
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        skip "$name" "named in GPU_CHECK_SKIP"
        return
    fi
    if [ "$left" -lt 10 ]; then
        skip "$name" "the ${DEADLINE_S} s deadline was reached"
        return
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    echo "gpu_check: $name (at most ${limit} s) ..."
    local started=$SECONDS rc status
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    case "$rc" in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    echo "gpu_check: $name $status (rc $rc, $((SECONDS - started)) s): $(tail -n 1 "$OUT/$name.log" | cut -c1-160)"
    record "$name" "$status" "$((SECONDS - started))" "rc $rc"
}

export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the real compiler and GPU; tests/conftest.py sets it again only without CUDA

step env 60 bash -c "$PYTHON -m redone_fast.info; nvidia-smi || echo 'nvidia-smi: not available'"

if [ "$DRY" = 1 ]; then
    skip build "GPU-only (the CUDA extension build); --dry uses the installed package as it is"
else
    # Editable and offline: the machine's torch, triton and transformers stay; setup.py compiles csrc/
    # with nvcc for sm_80 and sm_90a (TORCH_CUDA_ARCH_LIST) in MAX_JOBS parallel jobs.
    # If pip cannot (an old setuptools without editable wheels), build in place and let the source tree
    # resolve redone_fast.kernels through a link (installed, package_dir maps kernels/ there).
    step build 240 env MAX_JOBS="$(nproc)" bash -c "$PYTHON -m pip install --no-build-isolation --no-deps \
        --no-index -e . || { $PYTHON setup.py build_ext --inplace && ln -sfn ../kernels redone_fast/kernels; }"
fi

step aot 120 "$PYTHON" -m redone_fast.kernels.aot_check --jobs "$(nproc)" --json "$OUT/aot_check.json"

if [ "$DRY" = 1 ]; then
    skip gpu_tests "GPU-only; collecting them instead (gpu_tests_collect)"
    step gpu_tests_collect 120 "$PYTHON" -m pytest tests/test_gpu_real_sizes.py --collect-only -q \
        -p no:cacheprovider
else
    step gpu_tests 200 "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
        tests/test_gpu_real_sizes.py tests/test_lm_head_precision.py tests/test_triton_rows_layout.py \
        tests/test_triton_device_guard.py
    step gpu_op_tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$OUT/gpu_op_tests.xml" \
        tests/test_linear_cross_entropy.py tests/test_linear_logprobs.py tests/test_group_advantages.py \
        tests/test_ext_rows.py tests/test_ext_group_advantages.py -k cuda
fi

mkdir -p "$OUT/bench"
if [ "$DRY" = 1 ]; then
    skip bench_gpu_shapes "GPU-only (T=16384, H=2560, V=151936 bf16); the harness runs at a toy CPU size"
    step bench_lm_head 240 env REDONE_BENCH_RESULTS_DIR="$OUT/bench" REDONE_BENCH_SIZES="128,32,333" \
        REDONE_BENCH_TARGET_S=0.05 "$PYTHON" benchmarks/record.py -q -p no:cacheprovider
    step bench_rows 120 env REDONE_BENCH_ROWS=16 REDONE_BENCH_TARGET_S=0.05 "$PYTHON" -m pytest -q \
        -p no:cacheprovider benchmarks/bench_rows.py --benchmark-json="$OUT/bench/rows.json"
    skip bench_group_advantages "kept out of --dry for time (its 2-core CPU figures are in benchmarks/results)"
else
    # torch.compile last and on its own: record.py writes its file at the end, so a deadline that cuts
    # the compiles short still leaves every other implementation's figures recorded.
    step bench_lm_head 150 env REDONE_BENCH_RESULTS_DIR="$OUT/bench" REDONE_BENCH_SIZES="16384,2560,151936" \
        REDONE_BENCH_TARGET_S=0.5 "$PYTHON" benchmarks/record.py -q -p no:cacheprovider -k "not torch_compile"
    # float32 logits: what the ops hand the row kernels (fp32 chunks whatever the input dtype)
    step bench_rows 60 env REDONE_BENCH_DTYPE=float32 REDONE_BENCH_TARGET_S=0.3 "$PYTHON" -m pytest -q -p no:cacheprovider \
        benchmarks/bench_rows.py --benchmark-json="$OUT/bench/rows.json"
    step bench_group_advantages 60 env REDONE_BENCH_ROUNDS=5 "$PYTHON" -m pytest -q -p no:cacheprovider \
        benchmarks/bench_group_advantages.py --benchmark-json="$OUT/bench/group_advantages.json"
    step bench_lm_head_compile 150 env REDONE_BENCH_RESULTS_DIR="$OUT/bench" \
        REDONE_BENCH_SIZES="16384,2560,151936" REDONE_BENCH_TARGET_S=0.5 "$PYTHON" benchmarks/record.py -q \
        -p no:cacheprovider -k "torch_compile or fused"  # fused again: the ratio needs both in one file
fi

"$PYTHON" benchmarks/gpu_check_report.py "$OUT" $([ "$DRY" = 1 ] && echo --dry)
