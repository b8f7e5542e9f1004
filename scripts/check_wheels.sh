#!/usr/bin/env bash
# Check that every dependency of speech2image_nb[all] installs from wheels on another Python
# (default 3.13, Colab's), without building anything: pip resolves for that interpreter and
# Linux x86_64 and installs nothing.
#   bash scripts/check_wheels.sh          # Python 3.13
#   bash scripts/check_wheels.sh 3.10
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.13}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" - "$work/requirements.txt" <<'PY'
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = ("server", "diffusers", "whisper", "webrtc", "notebook")
reqs = list(project["dependencies"])
for extra in extras:
    reqs += [r for r in project["optional-dependencies"][extra] if not r.startswith("speech2image")]
open(sys.argv[1], "w").write("\n".join(sorted(set(reqs))) + "\n")
PY
platforms=()
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
  manylinux_2_17 manylinux2014 manylinux2010 manylinux1 linux; do
  platforms+=(--platform "${tag}_x86_64")
done
"$py" -m pip install --dry-run --quiet --ignore-installed --python-version "$version" "${platforms[@]}" \
  --only-binary=:all: --target "$work/target" --report "$work/report.json" -r "$work/requirements.txt" \
  2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
"$py" - "$work/report.json" "$version" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
wheels = {item["metadata"]["name"].lower(): item["download_info"]["url"].rsplit("/", 1)[1] for item in report["install"]}
for name in ("torch", "ctranslate2", "av", "numpy", "pillow", "onnxruntime", "tokenizers"):
    print(f"{name:12s} {wheels.get(name, 'MISSING')}")
print(f"Python {sys.argv[2]}: all {len(wheels)} packages of speech2image_nb[all] install from wheels")
PY
