#!/usr/bin/env bash
# Static gates: ruff and mypy (strict) on our code; generated protobuf code is excluded
# in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
echo "lint: ok"
