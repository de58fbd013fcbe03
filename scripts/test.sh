#!/usr/bin/env bash
# Lint (ruff), types (mypy on the core packages), then the whole test suite, GUI tests included,
# under a virtual X display (Xvfb). Arguments go to pytest. VENV names the environment (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check src tests benchmarks scripts
"$VENV/bin/mypy"
export QT_QPA_PLATFORM=xcb
exec xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"
