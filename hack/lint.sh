#!/usr/bin/env bash
# Static gates: ruff and mypy (strict) on our code (generated protobuf code is excluded
# in pyproject.toml) and hadolint on the Containerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
# The image definition; ignored rules are in .hadolint.yaml, each with its reason.
.venv/bin/hadolint --no-color Containerfile
echo "lint: ok"
