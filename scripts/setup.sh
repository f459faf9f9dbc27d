#!/usr/bin/env bash
# Creates .venv with drex and its pinned dependency set (CPU torch, faiss-cpu). Safe to re-run.
#   bash scripts/setup.sh
#   bash scripts/setup.sh --gpu       # faiss-gpu instead of faiss-cpu (CUDA machines, see README)
# Python 3.11, 3.12 or 3.13: the first of python3.11, python3.12, python3.13, python3 that
# runs, or PYTHON=/path/to/python; VENV=dir puts the environment elsewhere than .venv.
# On a CUDA machine, install a CUDA build of torch 2.13 into the environment first.
set -euo pipefail
cd "$(dirname "$0")/.."

# faiss-cpu and faiss-gpu both provide the `faiss` module: exactly one of them, by extra.
faiss=cpu
for arg in "$@"; do
  case $arg in
    --gpu) faiss=gpu ;;
    --cpu) faiss=cpu ;;
    *) echo "usage: bash scripts/setup.sh [--cpu|--gpu]" >&2; exit 2 ;;
  esac
done
venv=${VENV:-.venv}
supported="3.11 3.12 3.13"  # requires-python in pyproject.toml

py=${PYTHON:-}
if [ -z "$py" ]; then
  # `command -v` is not enough: pyenv's shims exist for versions that are not selected.
  for candidate in python3.11 python3.12 python3.13 python3; do
    if "$candidate" -c '' >/dev/null 2>&1; then py=$candidate; break; fi
  done
fi
version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
case " $supported " in
  *" $version "*) ;;
  *)
    echo "drex needs Python 3.11, 3.12 or 3.13 (found ${py:-no python} = ${version:-?});" \
      "set PYTHON=/path/to/one of them" >&2
    exit 1
    ;;
esac

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
# (PyPI has only that CUDA build for Linux x86_64: where no CPU wheel of 2.13.0 is at hand,
# Python 3.12/3.13 included, pip downloads it, about 2.7 GB with its nvidia-* libraries,
# unless a torch 2.13.0 is already installed in the environment.)
"${pip[@]}" install --quiet torch==2.13.0
# Switching between --cpu and --gpu: pip never removes the other faiss by itself.
other=$([ "$faiss" = cpu ] && echo gpu || echo cpu)
if compgen -G "$venv/lib/python3.*/site-packages/faiss_$other-*.dist-info" >/dev/null; then
  "${pip[@]}" uninstall --quiet --yes "faiss-$other"
fi
"${pip[@]}" install --quiet -c requirements/constraints.txt -e ".[$faiss,dev]"
echo "drex is installed in $venv: try $venv/bin/drex --help"
