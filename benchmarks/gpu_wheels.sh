#!/usr/bin/env bash
# Fill a folder with the wheels benchmarks/gpu_check.py installs on a bare GPU machine
# (Python 3.12, x86_64 Linux, torch preinstalled). Usage: bash benchmarks/gpu_wheels.sh [DIR]
set -euo pipefail
dir="${1:-wheels}"
here="$(cd "$(dirname "$0")" && pwd)"
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$dir" -r "$here/gpu_wheels.txt"
# min-dalle is published as an sdist only; its wheel is pure Python
python -m pip wheel --no-deps -w "$dir" min-dalle==0.4.11
du -sh "$dir"
