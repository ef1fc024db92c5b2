#!/usr/bin/env bash
# Set up (if needed) and run the default test selection (heavy tests: add `-m slow`, or `-m ""` for all).
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
exec .venv/bin/python -m pytest "$@"
