# Sourced by the scripts: make sure .venv exists and holds the project with the given extras.
# Usage: . scripts/_venv.sh "[dev]"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_FOR_VENV="${PYTHON:-python3}"
command -v "$PYTHON_FOR_VENV" >/dev/null 2>&1 || PYTHON_FOR_VENV=python
if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating $VENV ..." >&2
    "$PYTHON_FOR_VENV" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
fi
# Reinstall only when pyproject.toml changed since the last install.
STAMP="$VENV/.installed-${1:-base}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "Installing django-athm-sync${1:-} into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT${1:-}" >&2
    touch "$STAMP"
fi
PY="$VENV/bin/python"
