#!/usr/bin/env bash
# Create .venv with the project and its dev tools installed. Idempotent: re-installs only
# when pyproject.toml or hack/constraints.txt changed since the last successful run.
#
# Debian's /usr/bin/python3 (3.11), not a pyenv or /root interpreter: the non-root e2e tests
# run the launcher as an unprivileged user, who must be able to execute the interpreter.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
PY=${PYTHON:-/usr/bin/python3}
STAMP=$VENV/.pvl-inputs

want=$(cat "$REPO/pyproject.toml" "$REPO/hack/constraints.txt" "$0" | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  echo "venv: up to date ($VENV)"
  exit 0
fi
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
# --no-cache-dir: libvirt-python is an sdist compiled against the installed libvirt-dev; a
# cached wheel built against another libvirt version would be reused silently.
"$VENV/bin/pip" install --quiet --progress-bar off --no-cache-dir --disable-pip-version-check \
  -c "$REPO/hack/constraints.txt" -e "$REPO[dev]"
echo "$want" > "$STAMP"
echo "venv: installed ($VENV)"
