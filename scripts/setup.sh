#!/usr/bin/env bash
# Creates .venv with drex and its pinned dependency set (CPU torch). Safe to re-run.
#   bash scripts/setup.sh
# On a CUDA machine, install a CUDA build of torch 2.13 into .venv first, then re-run
# this script and `.venv/bin/pip install -e ".[gpu]"`.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-}
if [ -z "$py" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then py=$candidate; break; fi
  done
fi
version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "drex needs Python 3.11 (found $py = $version); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$py" -m venv .venv
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c requirements/constraints.txt -e ".[dev]"
echo "drex is installed in .venv: try .venv/bin/drex --help"
