#!/usr/bin/env bash
# Print the path of a Python 3.11 interpreter that can create a venv (what `make setup` needs), or explain in
# one message what is missing. Tried in order: $PYTHON, python3.11 and python3 on PATH, pyenv's 3.11 versions,
# `uv python find 3.11` when uv is installed (not required), and the usual install locations.
# pyproject.toml's requires-python is ">=3.11,<3.12": on Ubuntu 24.04 python3 is 3.12, so it is not enough.
set -uo pipefail

ok() { # $1 is a 3.11 interpreter with venv + ensurepip (Debian splits them into python3.11-venv)
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1 || return 1
  if ! "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    NOVENV="$1"
    return 1
  fi
}

candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
for name in python3.11 python3; do
  p="$(command -v "$name" 2>/dev/null)" && candidates+=("$p")
done
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for p in "$pyenv_root"/versions/3.11*/bin/python3.11; do [ -x "$p" ] && candidates+=("$p"); done
if command -v uv >/dev/null 2>&1; then
  p="$(uv python find 3.11 2>/dev/null)" && candidates+=("$p")
fi
# The usual install locations ($DG_PYTHON_LOCATIONS replaces the list; the tests set it empty).
read -r -a usual <<<"${DG_PYTHON_LOCATIONS-/usr/local/bin/python3.11 /opt/homebrew/bin/python3.11 /usr/bin/python3.11}"
candidates+=("${usual[@]}")

NOVENV=""
for c in "${candidates[@]}"; do
  [ -x "$c" ] || c="$(command -v "$c" 2>/dev/null)" || continue
  if ok "$c"; then
    echo "$c"
    exit 0
  fi
done

if [ -n "$NOVENV" ]; then
  echo "error: $NOVENV is Python 3.11 but cannot create a venv (no venv/ensurepip module): on Debian/Ubuntu run" \
    "'apt-get install python3.11-venv'" >&2
else
  have="no python3 on PATH"
  if command -v python3 >/dev/null 2>&1; then read -r have < <(python3 --version 2>&1); have="python3 is $have"; fi
  echo "error: Python 3.11 not found ($have; the project needs 3.11): install it (Ubuntu: 'apt-get install" \
    "python3.11 python3.11-venv', from the deadsnakes PPA on 24.04; or 'pyenv install 3.11'), or pass" \
    "PYTHON=/path/to/python3.11 to make" >&2
fi
exit 1
