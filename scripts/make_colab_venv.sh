#!/usr/bin/env bash
# The Colab-like environment for the classic Notebook 6.5 browser tests, in .venv-colab: Colab's
# pinned front end, kernel and widgets (tests/requirements-colab.txt) on the machine's Python 3.11,
# and this package on top without its dependencies (no torch, no Whisper). scripts/test.sh runs
# this; running it again only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=$(command -v python3.11 || command -v python3)
[ -x .venv-colab/bin/python ] || "$python" -m venv .venv-colab
py=.venv-colab/bin/python
# pip, minus the noise of unreadable local index folders some machines configure
pip_install() { $py -m pip install -q "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
pip_install -r tests/requirements-colab.txt
$py -c "import importlib.metadata as m; m.version('speech2image_nb')" 2>/dev/null || pip_install --no-deps -e .
