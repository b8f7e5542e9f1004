"""benchmarks/gpu_check.py: its CPU rehearsal, its target verdicts, and the wheels it installs."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    """The benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


@pytest.mark.slow
def test_rehearsal_writes_every_table_and_a_line_per_target(tmp_path, gpu_check):
    """``--rehearse`` runs every part on the CPU and writes each table, the profile and the targets."""
    out = tmp_path / "rehearsal.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--rehearse", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = out.read_text(encoding="utf-8")
    assert report.startswith("# GPU check: CPU rehearsal, ")
    for part in gpu_check.PARTS:
        assert re.search(rf"^\| {part} \| ok \|", report, re.MULTILINE), part
    assert "2 skipped" in report  # pytest -m gpu ran and found the CUDA-graph tests
    dalle = re.findall(r"^\| (tiny|mega-tiny) \| fp32 \| 1 \| (\S+) \| (\S+) \|", report, re.MULTILINE)
    assert sorted(variant for variant, _, _ in dalle) == ["mega-tiny", "tiny"]
    assert all(float(theirs) > 0 and float(ours) > 0 for _, theirs, ours in dalle)
    assert "## Profile: ours, tiny fp32" in report and "aten::" in report
    assert len(re.findall(r"^\| tiny \| float32 \| [12] \| \d", report, re.MULTILINE)) == 2
    labels = [t.label for t in gpu_check.TARGETS] + [gpu_check.MEMORY_TARGET]
    for label in labels:
        assert re.search(rf"^- (met|missed|not measured): {re.escape(label)} ", report, re.MULTILINE), label
        assert re.search(
            rf"^target (met|missed|not measured): {re.escape(label)} ", done.stdout, re.MULTILINE
        )


def test_every_gpu_test_file_is_run_by_the_check(gpu_check):
    """The check's ``pytest -m gpu`` names every test file that has a GPU-marked test."""
    marked = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").rglob("test_*.py")
        if re.search(
            r"^\s*(@pytest\.mark\.gpu\b|pytestmark\b.*\bgpu\b)", path.read_text(encoding="utf-8"), re.M
        )
    }
    assert marked == set(gpu_check.GPU_TEST_FILES)


def test_targets_are_met_missed_or_not_measured(gpu_check):
    """Each target reads its own row: seconds, the speed-up over min-dalle, peak memory per pair."""
    row = gpu_check.DalleRow

    def rows(mini_one: float, mega_peak: float) -> list:
        return [
            row("mini", "mini", "fp16", 1, "ours", mini_one, 1.0, 1.0),
            row("mini", "mini", "fp16", 1, "min-dalle", 4.0, math.nan, 1.5),
            row("mini", "mini", "fp16", 9, "ours", 0.59, 1.0, 2.0),
            row("mini", "mini", "bf16", 16, "ours", 0.1, 1.0, 2.0),  # another precision: not read
            row("mega", "mega", "fp16", 9, "ours", 1.6, 2.0, mega_peak),
            row("mega", "mega", "fp16", 9, "min-dalle", 9.0, math.nan, 7.0),
        ]

    verdicts = {v.label: v.state for v in gpu_check.check_targets(rows(0.3, 6.0), "fp16")}
    assert verdicts == {
        "mini, 1 image <= 0.4 s": "met",
        "mini, 1 image >= 10x min-dalle's modules": "met",
        "mini, 9 images <= 0.6 s": "met",
        "mini, 16 images <= 0.8 s": "not measured",
        "mega, 9 images <= 1.5 s": "missed",
        gpu_check.MEMORY_TARGET: "met",
    }
    slower = {v.label: v.state for v in gpu_check.check_targets(rows(0.5, 7.5), "fp16")}
    assert slower["mini, 1 image <= 0.4 s"] == "missed"
    assert slower["mini, 1 image >= 10x min-dalle's modules"] == "missed"  # 8x
    assert slower[gpu_check.MEMORY_TARGET] == "missed"


def test_the_wheel_list_pins_what_the_check_imports(gpu_check):
    """gpu_wheels.txt pins every package of the diffusers extra and pytest's; min-dalle comes apart."""
    pins = {}
    for line in (ROOT / "benchmarks" / "gpu_wheels.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned"
            pins[name.lower().replace("_", "-")] = version
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {"pytest", "pytest-timeout", "numpy", "pillow", "emoji", "requests"}
    for requirement in extras["optional-dependencies"]["diffusers"]:
        name = re.split(r"[<>=\[;! ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name != "speech2image-nb":
            wanted.add(name)
    assert wanted <= set(pins), wanted - set(pins)
    assert "torch" not in pins  # the GPU machine has its own CUDA build
    assert (
        gpu_check.MIN_DALLE == "min-dalle==0.4.11"
        and "min-dalle==0.4.11" in extras["optional-dependencies"]["test"]
    )
