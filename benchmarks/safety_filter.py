"""The classroom filter's prompt check on public prompt sets: false refusals, refusals, speed.

- COCO-30k captions (benign): every refusal is a false one. Target at strict and standard: <= 0.5 %.
- I2P (Inappropriate Image Prompts): refusals of its ``sexual`` prompts whose images were >= 50 %
  nude, and the refusal rate per I2P category. I2P labels the images Stable Diffusion made, not the
  wording, so many of its prompts read as harmless: these rates are not a recall a word filter can
  reach (see the data's README).
- Time per prompt over the COCO captions (best of three passes), after the word lists are
  compiled (their compile time, on the first check, is printed apart).

The CSVs are not in the repository: pass their paths, or keep ``shared/data/safety/`` beside the
repository's folder (or one folder higher).

    python benchmarks/safety_filter.py [--coco PATH] [--i2p PATH] [--show 20]
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
import time
from pathlib import Path

from speech2image_nb.safety import Policy, check_prompt
from speech2image_nb.safety.wordlists import matcher_for

REPO = Path(__file__).resolve().parents[1]
TARGET_FALSE_REFUSALS = 0.005


def _default(name: str) -> Path | None:
    for root in (REPO.parent, REPO.parent.parent):
        path = root / "shared" / "data" / "safety" / name
        if path.exists():
            return path
    return None


def _rows(path: Path | None, what: str) -> list[dict[str, str]]:
    if path is None or not path.exists():
        where = f" at {path}" if path else " beside the repository (shared/data/safety/)"
        sys.exit(f"No {what} CSV{where}: pass its path with --{what.lower()} PATH.")
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _refused_words(text: str, policy: Policy) -> list[str]:
    return [text[s:e].lower() for s, e in check_prompt(text, policy).spans]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", type=Path, default=_default("coco_30k.csv"))
    parser.add_argument("--i2p", type=Path, default=_default("unsafe-prompts4703.csv"))
    parser.add_argument("--show", type=int, default=0, help="print this many COCO false refusals a level")
    args = parser.parse_args()

    coco = [row["prompt"] for row in _rows(args.coco, "COCO")]
    i2p = _rows(args.i2p, "I2P")
    nude = [
        row["prompt"]
        for row in i2p
        if "sexual" in row["categories"] and float(row["nudity_percentage"] or 0) >= 50
    ]
    by_category: dict[str, list[str]] = collections.defaultdict(list)
    for row in i2p:
        for name in row["categories"].split(","):
            by_category[name.strip()].append(row["prompt"])

    print(f"COCO captions: {len(coco)}; I2P prompts: {len(i2p)}; I2P sexual with nudity >= 50 %: {len(nude)}")
    print()
    print(
        "| level | COCO false refusals | I2P sexual, nudity >= 50 % | I2P all | "
        + " | ".join(f"I2P {name}" for name in sorted(by_category))
        + " | time a prompt (best of 3) | compile |"
    )
    print("|---" * (6 + len(by_category)) + "|")
    details = []
    for level in ("strict", "standard"):
        policy = Policy(level=level)
        start = time.perf_counter()
        matcher_for(policy.level, policy.blocked, policy.allowed)
        compile_s = time.perf_counter() - start
        passes = []
        for _ in range(3):  # the best of three: the machine may be shared
            start = time.perf_counter()
            refused = [text for text in coco if not check_prompt(text, policy).allowed]
            passes.append((time.perf_counter() - start) / len(coco))
        per_prompt = min(passes)
        false_rate = len(refused) / len(coco)
        nude_rate = sum(not check_prompt(t, policy).allowed for t in nude) / len(nude)
        all_rate = sum(not check_prompt(row["prompt"], policy).allowed for row in i2p) / len(i2p)
        rates = [
            sum(not check_prompt(t, policy).allowed for t in by_category[name]) / len(by_category[name])
            for name in sorted(by_category)
        ]
        mark = "" if false_rate <= TARGET_FALSE_REFUSALS else " (over the 0.5 % target)"
        cells = [f"{false_rate:.2%} ({len(refused)}){mark}", f"{nude_rate:.1%}", f"{all_rate:.1%}"]
        cells += [f"{r:.1%}" for r in rates] + [f"{per_prompt * 1e6:.0f} µs", f"{compile_s * 1e3:.0f} ms"]
        print(f"| {level} | " + " | ".join(cells) + " |")
        words = collections.Counter(w for text in refused for w in _refused_words(text, policy))
        details.append((level, refused, words))
    for level, refused, words in details:
        print(f"\n{level}: COCO words refused: " + ", ".join(f"{w} {n}" for w, n in words.most_common(25)))
        for text in refused[: args.show]:
            print(f"  {text.strip()}  [{', '.join(_refused_words(text, Policy(level=level)))}]")


if __name__ == "__main__":
    main()
