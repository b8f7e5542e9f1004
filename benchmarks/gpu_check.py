"""One command for the GPU path: ``pytest -m gpu``, the DALL-E benchmark, SD-Turbo-shaped diffusers, targets.

    python benchmarks/gpu_check.py --wheels wheels --out gpu.md    # a CUDA machine, about 6 minutes
    python benchmarks/gpu_check.py --rehearse --out rehearsal.md   # the same code path on a CPU, shrunk

On a bare GPU machine (torch preinstalled, nothing downloadable) ``--wheels DIR`` first installs
the folder ``bash benchmarks/gpu_wheels.sh DIR`` makes (``pip install --no-index --find-links``).
Then each part runs in a process of its own under its own time cap, so a part that fails, hangs
or breaks the CUDA context is reported and the rest still runs:

1. ``pytest -m gpu`` (CUDA-graph steps against eager steps, fp16 and bf16);
2. DALL-E mini, then mega: ours against min-dalle's modules over the same random full-size
   weights, 1/4/9/16 images, fp16 and bf16: seconds per request, our decoder ms/step, peak memory
   (``torch.cuda.max_memory_allocated``, each implementation loaded alone), and a profiler table
   of eager decoder steps (the measuring code is ``engine_speed.py``'s);
3. an SD-Turbo-shaped diffusers pipeline (random weights) at 1 and 9 images.

Every table goes to one markdown file (``--out``), headed with the GPU's name and the date, and the
issue's targets are checked (mini 1 image <= 0.4 s and >= 10x min-dalle's modules; 9 images
<= 0.6 s; 16 <= 0.8 s; mega 9 <= 1.5 s; peak memory no more than min-dalle's), one line each.

``--rehearse`` runs the same parts on the CPU with tiny random models, one image, fp32 and a
two-step profile, in well under a minute, so that a device run fails on nothing but the GPU. Its
figures are not performance numbers. min-dalle's VQGAN has one fixed size that tiny checkpoints
do not have, so there its pictures come from a blank stand-in decoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS_FILE = ROOT / "benchmarks" / "gpu_wheels.txt"
#: published as an sdist only; ``gpu_wheels.sh`` builds its wheel
MIN_DALLE = "min-dalle==0.4.11"
#: every test file with ``pytest.mark.gpu`` tests (a test keeps this list complete)
GPU_TEST_FILES = ("tests/test_dalle_mini_engine.py",)
#: what a run does, in this order
PARTS = ("gpu-tests", "dalle-mini", "dalle-mega", "diffusers")
#: the engine's precision on CUDA when none is asked for: the targets are checked at it
CUDA_DEFAULT_DTYPE = "fp16"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures: the full-size GPU run or the shrunk CPU rehearsal."""

    device: str
    #: role ("mini" / "mega") -> checkpoint variant of ``save_random_checkpoint``
    variants: dict[str, str]
    dtypes: tuple[str, ...]
    #: role -> images per request, the one a target needs first (a cap may cut the rest)
    counts: dict[str, tuple[int, ...]]
    profile_images: int
    profile_tokens: int
    diffusers_shape: str
    diffusers_counts: tuple[int, ...]
    #: part name -> seconds it may run
    caps: dict[str, int]
    #: False: min-dalle decodes with a blank stand-in (tiny checkpoints have a narrow VQGAN)
    min_dalle_vqgan: bool
    target_dtype: str


GPU_PLAN = Plan(
    device="cuda",
    variants={"mini": "mini", "mega": "mega"},
    dtypes=("fp16", "bf16"),
    counts={"mini": (1, 4, 9, 16), "mega": (9, 1, 4, 16)},
    profile_images=4,
    profile_tokens=8,
    diffusers_shape="sd-turbo",
    diffusers_counts=(1, 9),
    caps={"install": 90, "gpu-tests": 45, "dalle-mini": 120, "dalle-mega": 120, "diffusers": 75},
    min_dalle_vqgan=True,
    target_dtype=CUDA_DEFAULT_DTYPE,
)
REHEARSAL_PLAN = Plan(
    device="cpu",
    variants={"mini": "tiny", "mega": "mega-tiny"},
    dtypes=("fp32",),
    counts={"mini": (1,), "mega": (1,)},
    profile_images=1,
    profile_tokens=2,
    diffusers_shape="tiny",
    diffusers_counts=(1, 2),
    caps={"install": 90, "gpu-tests": 60, "dalle-mini": 60, "dalle-mega": 60, "diffusers": 60},
    min_dalle_vqgan=False,
    target_dtype="fp32",
)


# ---------------------------------------------------------------------------------------------
# rows: what the parts measure, streamed as JSON lines so a part cut by its cap keeps its rows


@dataclasses.dataclass(frozen=True)
class DalleRow:
    """One implementation's timing of one request of ``images`` pictures."""

    role: str
    variant: str
    dtype: str
    images: int
    implementation: str  # "ours" or "min-dalle"
    seconds: float
    step_ms: float
    peak_gib: float


@dataclasses.dataclass(frozen=True)
class ProfileRow:
    """A profiler table as torch printed it."""

    title: str
    table: str


@dataclasses.dataclass(frozen=True)
class DiffusersRow:
    """Seconds of one SD-Turbo-shaped request."""

    shape: str
    dtype: str
    images: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class FailureRow:
    """A step of a part that raised; the part went on with its next step."""

    step: str
    error: str


Row = DalleRow | ProfileRow | DiffusersRow | FailureRow
ROW_TYPES: dict[str, type[Any]] = {t.__name__: t for t in (DalleRow, ProfileRow, DiffusersRow, FailureRow)}


def append_row(path: Path, row: Row) -> None:
    """Add ``row`` to the JSON-lines file ``path`` at once (the part may be killed any time)."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"kind": type(row).__name__, **dataclasses.asdict(row)}) + "\n")


def read_rows(path: Path) -> list[Row]:
    """The rows in ``path`` (none if the part wrote none); a half-written last line is dropped."""
    rows: list[Row] = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append(ROW_TYPES[data.pop("kind")](**data))
    return rows


# ---------------------------------------------------------------------------------------------
# the parts (each runs in a child process: ``gpu_check.py --part NAME --rows FILE``)


class BlankDetokenizer:
    """Stands in for min-dalle's VQGAN in the rehearsal: a black grid of the right shape."""

    def forward(self, is_seamless: bool, image_tokens: Any) -> Any:
        import torch

        grid = math.isqrt(image_tokens.shape[0])
        return torch.zeros(grid * 256, grid * 256, 3)


def free_memory(device: str) -> None:
    """Return what deleted models held, so the next one is measured alone."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def guarded(rows: Path, step: str, run: Callable[[], None]) -> bool:
    """Run one step of a part; if it raises, record a :class:`FailureRow` and say False."""
    try:
        run()
    except Exception as error:
        traceback.print_exc()
        append_row(rows, FailureRow(step, f"{type(error).__name__}: {error}"))
        return False
    return True


def time_ours(plan: Plan, role: str, dtype: str, model_dir: str, rows: Path) -> None:
    """Our engine loaded alone: each image count, then (first precision) the profile."""
    import engine_speed

    from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine
    from speech2image_nb.server.engines.dalle_mini.config import VARIANTS

    variant, counts, device = plan.variants[role], plan.counts[role], plan.device
    engine = DalleMiniEngine(
        VARIANTS[variant].is_mega, model_dir=model_dir, device=device, dtype=dtype, max_batch=max(counts)
    )
    engine.load()
    for count in counts:
        seconds, step_ms, peak = engine_speed.time_ours(engine, count, device)
        append_row(rows, DalleRow(role, variant, dtype, count, "ours", seconds, step_ms, peak))
        print(f"  ours {variant} {dtype} {count} image(s): {seconds:.3f} s", flush=True)
    if dtype == plan.dtypes[0]:
        images, steps = plan.profile_images, plan.profile_tokens
        table = engine_speed.profile_step(engine, images, token_count=steps, device=device)
        title = f"ours, {variant} {dtype}, {images} image(s), eager: encoder once + {steps} decoder steps"
        append_row(rows, ProfileRow(title, table))


def time_min_dalle(plan: Plan, role: str, dtype: str, model_dir: str, rows: Path) -> None:
    """min-dalle's modules loaded alone, over the same checkpoint: each image count."""
    import engine_speed

    from speech2image_nb.server.engines.dalle_mini.config import VARIANTS
    from tests.dalle_reference import build_min_dalle

    variant, counts, device = plan.variants[role], plan.counts[role], plan.device
    reference = build_min_dalle(
        Path(model_dir),
        VARIANTS[variant],
        device=device,
        dtype=engine_speed.DTYPES[dtype],
        with_vqgan=plan.min_dalle_vqgan,
    )
    if not plan.min_dalle_vqgan:
        reference.detokenizer = BlankDetokenizer()
    for index, count in enumerate(counts):
        # min-dalle empties the CUDA cache at every step: one warm-up per precision is enough
        seconds, peak = engine_speed.time_min_dalle(reference, count, device, warm_up=index == 0)
        append_row(rows, DalleRow(role, variant, dtype, count, "min-dalle", seconds, math.nan, peak))
        print(f"  min-dalle {variant} {dtype} {count} image(s): {seconds:.3f} s", flush=True)


def dalle_part(plan: Plan, role: str, rows: Path) -> None:
    """Ours, then min-dalle's modules, per precision, over one random checkpoint of ``role``."""
    from speech2image_nb.server.engines.dalle_mini import save_random_checkpoint

    variant = plan.variants[role]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        save_random_checkpoint(tmp, variant, seed=0)
        print(f"random {variant} checkpoint written in {time.perf_counter() - started:.0f} s", flush=True)
        for dtype in plan.dtypes:
            for name, measure in (("ours", time_ours), ("min-dalle", time_min_dalle)):
                guarded(
                    rows, f"{name} {variant} {dtype}", lambda m=measure, d=dtype: m(plan, role, d, tmp, rows)
                )
                free_memory(plan.device)


def diffusers_part(plan: Plan, rows: Path) -> None:
    """SD-Turbo-shaped random pipeline, one step, at the engine's default precision."""
    import engine_speed

    from speech2image_nb.server.engines.base import resolve_device_and_dtype

    dtype = resolve_device_and_dtype(plan.device, None)[1]

    def measure() -> None:
        timings = engine_speed.diffusers_turbo_shaped(
            plan.device, list(plan.diffusers_counts), shape=plan.diffusers_shape
        )
        for count, seconds in timings:  # each row as soon as it is measured
            append_row(rows, DiffusersRow(plan.diffusers_shape, dtype, count, seconds))
            print(f"  {plan.diffusers_shape}-shaped {count} image(s): {seconds:.3f} s", flush=True)

    guarded(rows, f"{plan.diffusers_shape}-shaped pipeline", measure)


def run_child_part(name: str, plan: Plan, rows: Path) -> None:
    """Body of ``--part NAME``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    if plan.device == "cpu":
        import torch

        # one thread: on a shared CPU, two threads waited for each other at every small op
        os.environ["S2I_CPU_THREADS"] = "1"
        torch.set_num_threads(1)
    if name.startswith("dalle-"):
        dalle_part(plan, name.removeprefix("dalle-"), rows)
    elif name == "diffusers":
        diffusers_part(plan, rows)
    else:
        raise SystemExit(f"unknown part {name!r}")


# ---------------------------------------------------------------------------------------------
# the orchestrator


@dataclasses.dataclass(frozen=True)
class PartResult:
    """How one part ended: ``status`` is ``ok``, ``failed (exit N)`` or ``cut at its cap``."""

    name: str
    status: str
    seconds: float
    cap: int
    output: str


def child_environment() -> dict[str, str]:
    """This process's environment with the repository importable and the hub offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_part(name: str, command: Sequence[str], cap: int) -> PartResult:
    """Run ``command`` (echoing its output) for at most ``cap`` seconds, then kill its process group."""
    print(f"\n=== {name} (cap {cap} s): {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        env=child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    lines: list[str] = []

    def echo() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=cap)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        status = "cut at its cap"
    reader.join(timeout=10)
    seconds = time.perf_counter() - started
    print(f"=== {name}: {status} after {seconds:.0f} s", flush=True)
    return PartResult(name, status, seconds, cap, "".join(lines))


def machine_heading(rehearse: bool) -> tuple[str, str]:
    """(title, one line of facts): the GPU's name and the date, or the CPU of a rehearsal."""
    import torch

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = f"torch {torch.__version__}"
    if not rehearse and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        facts += f", CUDA {torch.version.cuda}, compute capability {major}.{minor}"
    elif rehearse:
        import engine_speed

        name = "CPU rehearsal"
        facts += f", {engine_speed.cpu_description()}"
    else:
        name = "no CUDA GPU visible"
    return f"# GPU check: {name}, {now}", facts


# ---------------------------------------------------------------------------------------------
# targets


@dataclasses.dataclass(frozen=True)
class Target:
    """A time or speed-up the engine must reach for ``images`` pictures of ``role``."""

    label: str
    role: str
    images: int
    max_seconds: float | None = None
    min_speedup: float | None = None


TARGETS = (
    Target("mini, 1 image <= 0.4 s", "mini", 1, max_seconds=0.4),
    Target("mini, 1 image >= 10x min-dalle's modules", "mini", 1, min_speedup=10.0),
    Target("mini, 9 images <= 0.6 s", "mini", 9, max_seconds=0.6),
    Target("mini, 16 images <= 0.8 s", "mini", 16, max_seconds=0.8),
    Target("mega, 9 images <= 1.5 s", "mega", 9, max_seconds=1.5),
)
MEMORY_TARGET = "peak memory <= min-dalle's (each variant and image count)"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``state`` is ``met``, ``missed`` or ``not measured``; ``detail`` the figures behind it."""

    label: str
    state: str
    detail: str


def timing(rows: Sequence[Row], role: str, dtype: str, images: int, implementation: str) -> DalleRow | None:
    """The DALL-E row of that measurement, if the run got to it."""
    for row in rows:
        if (
            isinstance(row, DalleRow)
            and (row.role, row.dtype, row.images, row.implementation) == (role, dtype, images, implementation)
            and not math.isnan(row.seconds)
        ):
            return row
    return None


def check_targets(rows: Sequence[Row], dtype: str) -> list[Verdict]:
    """One verdict per target, from the rows of precision ``dtype``."""
    verdicts = []
    for target in TARGETS:
        ours = timing(rows, target.role, dtype, target.images, "ours")
        theirs = timing(rows, target.role, dtype, target.images, "min-dalle")
        if target.max_seconds is not None:
            if ours is None:
                verdicts.append(Verdict(target.label, "not measured", "no row for it in this run"))
                continue
            state = "met" if ours.seconds <= target.max_seconds else "missed"
            verdicts.append(Verdict(target.label, state, f"{ours.seconds:.3f} s"))
        elif target.min_speedup is not None:
            if ours is None or theirs is None:
                verdicts.append(Verdict(target.label, "not measured", "no row for it in this run"))
                continue
            speedup = theirs.seconds / ours.seconds
            state = "met" if speedup >= target.min_speedup else "missed"
            verdicts.append(
                Verdict(
                    target.label, state, f"{speedup:.1f}x ({theirs.seconds:.3f} s / {ours.seconds:.3f} s)"
                )
            )
    pairs = []
    for row in rows:
        if isinstance(row, DalleRow) and row.implementation == "ours" and row.dtype == dtype:
            theirs = timing(rows, row.role, dtype, row.images, "min-dalle")
            if theirs is not None and not (math.isnan(row.peak_gib) or math.isnan(theirs.peak_gib)):
                pairs.append((row, theirs))
    if not pairs:
        verdicts.append(Verdict(MEMORY_TARGET, "not measured", "no peak memory on both sides (CUDA only)"))
    else:
        worst = max(pairs, key=lambda pair: pair[0].peak_gib - pair[1].peak_gib)
        state = "met" if all(ours.peak_gib <= theirs.peak_gib for ours, theirs in pairs) else "missed"
        ours, theirs = worst
        detail = (
            f"worst case: {ours.variant} {ours.images} image(s), ours {ours.peak_gib:.2f} GiB, "
            f"min-dalle {theirs.peak_gib:.2f} GiB"
        )
        verdicts.append(Verdict(MEMORY_TARGET, state, detail))
    return verdicts


# ---------------------------------------------------------------------------------------------
# the report


def fmt(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def dalle_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| variant | dtype | images | min-dalle s | ours s | speed-up | ours ms/step "
        "| peak GiB min-dalle | peak GiB ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ours_rows = sorted(
        (r for r in rows if isinstance(r, DalleRow) and r.implementation == "ours"),
        key=lambda r: (r.role != "mini", r.dtype, r.images),
    )
    for ours in ours_rows:
        theirs = timing(rows, ours.role, ours.dtype, ours.images, "min-dalle")
        their_s = theirs.seconds if theirs else math.nan
        their_peak = theirs.peak_gib if theirs else math.nan
        speedup = "n/a" if math.isnan(their_s) else f"{their_s / ours.seconds:.1f}x"
        lines.append(
            f"| {ours.variant} | {ours.dtype} | {ours.images} | {fmt(their_s, 2)} | {ours.seconds:.3f} "
            f"| {speedup} | {ours.step_ms:.2f} | {fmt(their_peak, 2)} "
            f"| {fmt(ours.peak_gib, 2)} |"
        )
    return lines


def tail(text: str, count: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-count:])


def render_report(
    title: str,
    facts: str,
    command: str,
    rehearse: bool,
    parts: Sequence[PartResult],
    rows: Sequence[Row],
    verdicts: Sequence[Verdict],
    target_dtype: str,
) -> str:
    """The markdown file: heading, parts, each table, the profiles, the targets."""
    out = [title, "", f"{facts}.", "", f"Command: `{command}`", ""]
    if rehearse:
        out += [
            "Rehearsal on the CPU with tiny random models: these figures are not performance numbers.",
            "",
        ]
    out += ["## Parts", "", "| part | status | seconds | cap s |", "|---|---|---|---|"]
    out += [f"| {p.name} | {p.status} | {p.seconds:.0f} | {p.cap} |" for p in parts]
    for part in parts:
        if part.name in ("install", "gpu-tests") or part.status != "ok":
            out += [
                "",
                f"### Output of {part.name} (last lines)",
                "",
                "```text",
                tail(part.output, 30),
                "```",
            ]
    failures = [r for r in rows if isinstance(r, FailureRow)]
    if failures:
        out += ["", "### Steps that raised (the part went on)", ""]
        out += [f"- {r.step}: {r.error}" for r in failures]
    out += ["", "## DALL-E: min-dalle's modules against ours (same random weights)", ""]
    out += dalle_table(rows)
    out += [
        "",
        "Seconds per request after a warm-up (encoder, 256 decoder steps, VQGAN); ms/step from a"
        " token-only run; peak memory with each implementation loaded alone (ours keeps the CUDA"
        " graphs and buffers of every batch size it ran before, as the server does).",
    ]
    for profile in (r for r in rows if isinstance(r, ProfileRow)):
        out += ["", f"## Profile: {profile.title}", "", "```text", profile.table.rstrip(), "```"]
    out += ["", "## SD-Turbo-shaped diffusers (random weights, 1 step)", ""]
    out += ["| shape | dtype | images | seconds |", "|---|---|---|---|"]
    out += [
        f"| {r.shape} | {r.dtype} | {r.images} | {r.seconds:.3f} |"
        for r in rows
        if isinstance(r, DiffusersRow)
    ]
    out += ["", f"## Targets (at {target_dtype})", ""]
    out += [f"- {v.state}: {v.label} ({v.detail})" for v in verdicts]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu.md"), help="markdown file (default gpu.md)")
    parser.add_argument("--wheels", type=Path, help="folder of wheels to install first (offline)")
    parser.add_argument("--rehearse", action="store_true", help="the CPU rehearsal: tiny models, one image")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="run only these parts (default all; install runs whenever --wheels is given)",
    )
    parser.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="PART=SECONDS",
        help="change a part's time cap, e.g. --cap dalle-mega=180 (repeatable)",
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = REHEARSAL_PLAN if args.rehearse else GPU_PLAN
    caps = dict(plan.caps)
    for item in args.cap:
        name, _, seconds = item.partition("=")
        if name not in caps or not seconds.isdigit():
            parser.error(f"--cap takes PART=SECONDS with PART one of {', '.join(caps)}, not {item!r}")
        caps[name] = int(seconds)
    plan = dataclasses.replace(plan, caps=caps)
    if args.part:
        run_child_part(args.part, plan, args.rows)
        return 0

    command = shlex.join([Path(sys.executable).name, *sys.argv])
    started = time.perf_counter()
    parts: list[PartResult] = []
    if args.wheels:
        install = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(args.wheels)]
        parts.append(run_part("install", [*install, "-r", str(WHEELS_FILE), MIN_DALLE], plan.caps["install"]))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import torch

    if not args.rehearse and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; run it on a GPU machine, or rehearse with --rehearse.")
        return 2
    title, facts = machine_heading(args.rehearse)
    pytest_command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-v", "-rs"]
    if "gpu-tests" in args.parts:
        tests = run_part("gpu-tests", [*pytest_command, *GPU_TEST_FILES], plan.caps["gpu-tests"])
        summary = tail(tests.output, 1)
        if not args.rehearse and tests.status == "ok" and ("passed" not in summary or "skipped" in summary):
            tests = dataclasses.replace(
                tests, status=f"failed (not every GPU test ran: {summary.strip('= ')})"
            )
        parts.append(tests)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in (p for p in PARTS[1:] if p in args.parts):
            rows_file = Path(tmp) / f"{name}.jsonl"
            child = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--rows", str(rows_file)]
            parts.append(run_part(name, child + (["--rehearse"] if args.rehearse else []), plan.caps[name]))
            rows += read_rows(rows_file)
    verdicts = check_targets(rows, plan.target_dtype)
    report = render_report(title, facts, command, args.rehearse, parts, rows, verdicts, plan.target_dtype)
    args.out.write_text(report, encoding="utf-8")
    print(f"\n{title}\n")
    for verdict in verdicts:
        print(f"target {verdict.state}: {verdict.label} ({verdict.detail})")
    print(f"\nwrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0 if all(p.status == "ok" for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
