#!/usr/bin/env bash
# Install lrctl with every role's extra plus the test tools into ./.venv, as
# `pip install -e ".[all,dev]"` (idempotent, re-run freely). A machine of one role needs
# only its extra: `pip install 'lrctl[controller]'` (no torch, no Ray), 'lrctl[worker]', ...
#
# torch: if the venv has no torch yet, torch==$LRCTL_TORCH_VERSION (default 2.13.0) is
# installed first (from a local wheel folder where pip's configuration lists one). If the
# interpreter you run this with already has torch (your CUDA build, say), the venv is created
# with --system-site-packages and keeps using it. Either way the later install sees
# torch>=2.4 satisfied and never swaps it.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=${LRCTL_VENV:-.venv}

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c "import torch" 2>/dev/null; then
    echo "setup: reusing the torch of $("$python" -c 'import sys; print(sys.executable)')"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# A pip configuration that lists local package folders makes pip warn about each one it skips.
quiet() { "$@" 2> >(grep -v '^WARNING: Location' >&2); }
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==${LRCTL_TORCH_VERSION:-2.13.0}"
  quiet "${pip[@]}" install -q "torch==${LRCTL_TORCH_VERSION:-2.13.0}"
fi
echo "setup: installing lrctl[all,dev] into $venv"
quiet "${pip[@]}" install -q -e ".[all,dev]"
