#!/usr/bin/env bash
# The GPU check with the wheel folder beside the repository root: writes DIR/gpu.md and the whole
# console output to DIR/gpu_check.log. Usage: bash benchmarks/gpu_check.sh [DIR] [more gpu_check.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.}"
shift || true
mkdir -p "$dir"
wheels=()
[ -d wheels ] && wheels=(--wheels wheels)
python benchmarks/gpu_check.py "${wheels[@]}" --out "$dir/gpu.md" "$@" 2>&1 | tee "$dir/gpu_check.log"
exit "${PIPESTATUS[0]}"
