#!/usr/bin/env bash
# Set up (if needed) and run the default test selection (heavy tests: add `-m slow`, or `-m ""` for all).
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
# Two workers: the default selection is ~750 tests, about half the wall time of one process on 2 cores.
exec .venv/bin/python -m pytest -n 2 "$@"
