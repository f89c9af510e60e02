"""The CIFAR-10 table of issue 27: text counterparts against the best image-conditioned mode, with 5 seeds.

The recipe of ``train_evidence.py --tables cifar10-finetuned`` (100 training images per class, the CIFAR ResNet-20 from
random initialisation, 400 steps of 128, the 10,000 test images, one torch thread per run), with the generations of
``generation_quality.py --modes`` (the fine-tuned tiny generator, one counterpart per training image, each filtered by
the ResNet-20 prototype rule at its calibrated threshold):

- ``none``, ``synthetic-add`` and ``diffcoremix`` with the text counterparts: seeds 3 and 4 run here; seeds 0-2 are
  the per-seed values of the 2026-11-25 table in ``benchmarks/README.md`` (the same generator, generations and recipe:
  ``generation_quality.py`` reproduces its judge agreement and kept count exactly, and seed 3 is checked against the
  values the issue quotes);
- ``diffcoremix`` with ``--mode``'s counterparts, filtered, seeds 0-4;
- the same with the copy bound (``filter --max-copy-similarity``) added to the filter, seeds 0-4.

Two compare commands run at a time (one per core), each resumable; the table pairs every row with ``none`` by seed
(mean difference and its 95% t-interval, as ``compare`` prints them) and names the pairs the paper's claim needs.

Run: ``.venv/bin/python benchmarks/counterpart_table.py --mode "img2img 0.5" --copy-bound 0.95 --out /tmp/ct``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import REPO, shared_data  # benchmarks/common.py

WORK = REPO / "benchmarks" / ".work" / "generation_quality"

RECORDED = {  # top-1 (%) of seeds 0-2, benchmarks/README.md "CIFAR-10 with the fine-tuned tiny generator's images"
    "none": {0: 46.34, 1: 45.64, 2: 47.18},
    "synthetic-add, text": {0: 48.93, 1: 49.85, 2: 50.36},
    "diffcoremix, text": {0: 49.67, 1: 48.78, 2: 50.03},
}


def lanes(data: Path, out: Path, mode: Path, copy: Path) -> list[list[list[str]]]:
    """Two chains of compare commands (about the same work each), run side by side."""
    program = [sys.executable, "-m", "diffcoremix", "compare", str(data / "cifar10" / "train"), "--test",
               str(data / "cifar10" / "test"), "--config", "cifar", "--max-steps", "400"]  # fmt: skip
    text = WORK / "generated"
    return [
        [
            [*program, "--synthetic", str(text), "--methods", "none,synthetic-add,diffcoremix", "--seeds", "3,4",
             "-o", str(out / "text")],
            [*program, "--synthetic", str(copy), "--methods", "diffcoremix", "--seeds", "2,3,4", "-o",
             str(out / "copy-234")],
        ],
        [
            [*program, "--synthetic", str(mode), "--methods", "diffcoremix", "--seeds", "0,1,2,3,4", "-o",
             str(out / "mode")],
            [*program, "--synthetic", str(copy), "--methods", "diffcoremix", "--seeds", "0,1", "-o",
             str(out / "copy-01")],
        ],
    ]  # fmt: skip


def copy_bound_set(mode: Path, copy: Path, bound: float, embedder: str) -> None:
    """A copy of the mode's generations, filtered as they were plus the copy bound."""
    if not copy.exists():
        shutil.copytree(mode, copy, symlinks=True)
    report = json.loads((mode / "filter_report.json").read_text())
    subprocess.run([sys.executable, "-m", "diffcoremix", "filter", str(copy), "--embedder", embedder, "--reference",
                    str(report["reference"]), "--threshold", repr(report["threshold"]), "--max-copy-similarity",
                    repr(bound)], check=True)  # fmt: skip


def top1(folder: Path, method: str) -> dict[int, float]:
    """Per seed, the test top-1 (%) of a compare folder's runs of ``method``."""
    values = {}
    for summary in sorted((folder / "runs").glob(f"{method}-seed*/summary.json")):
        seed = int(summary.parent.name.rsplit("seed", 1)[1])
        values[seed] = 100 * json.loads(summary.read_text())["test"]["top1"]
    return values


def table(out: Path, mode_name: str, bound: float) -> str:
    from diffcoremix.train.comparison import estimate, paired_difference

    copies: dict[int, float] = {}  # the copy-bound runs, from the folder of each lane
    for folder in sorted(out.glob("copy-[0-9]*")):
        copies |= top1(folder, "diffcoremix")
    rows = {
        "none": {**RECORDED["none"], **top1(out / "text", "none")},
        "synthetic-add, text": {**RECORDED["synthetic-add, text"], **top1(out / "text", "synthetic-add")},
        "diffcoremix, text": {**RECORDED["diffcoremix, text"], **top1(out / "text", "diffcoremix")},
        f"diffcoremix, {mode_name}": top1(out / "mode", "diffcoremix"),
        f"diffcoremix, {mode_name}, copy bound {bound:g}": copies,
    }  # fmt: skip
    seeds = sorted({s for values in rows.values() for s in values})

    def interval(values: dict[int, float], base: dict[int, float]) -> str:
        d = paired_difference(values, base)
        if d is None:
            return "-"
        if d.low is None or d.high is None:
            return f"{d.mean:+.2f} (1 seed)"
        return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] (n={d.n})"

    lines = ["| row | seeds | top-1 (%) | Δ vs none (95% CI) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|---|" + "---:|" * len(seeds)]  # fmt: skip
    for name, values in rows.items():
        est = estimate(list(values.values())) if values else None
        cell = "-" if est is None else f"{est.mean:.2f} ± {est.std or 0:.2f}"
        per_seed = " | ".join(f"{values[s]:.2f}" if s in values else "" for s in seeds)
        lines.append(f"| {name} | {len(values)} | {cell} | {interval(values, rows['none'])} | {per_seed} |")
    names = list(rows)
    pairs = [(names[2], names[1], "mixing against adding, text counterparts"),
             (names[3], names[2], "the image-conditioned mode against text, both mixed"),
             (names[4], names[3], "the copy bound on against off")]  # fmt: skip
    lines += ["", "| pair | Δ top-1 (95% CI) |", "|---|---|"]
    lines += [f"| {what}: {a} − {b} | {interval(rows[a], rows[b])} |" for a, b, what in pairs]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", required=True, help="a mode folder of generation_quality.py --modes")
    parser.add_argument("--copy-bound", type=float, required=True)
    parser.add_argument("--out", type=Path, default=Path("counterpart_table_out"))
    parser.add_argument("--table-only", action="store_true", help="print the table of what has run")
    args = parser.parse_args()
    data = shared_data()
    mode, copy = WORK / "modes" / args.mode, args.out / "copy-bound"
    if not args.table_only:
        copy_bound_set(mode, copy, args.copy_bound, f"resnet20:{data.parent / 'models' / 'resnet20_cifar10.th'}")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        chains = [
            subprocess.Popen([sys.executable, "-c", "import subprocess, sys, json; [subprocess.run(c, check=True) "
                              "for c in json.loads(sys.argv[1])]", json.dumps(chain)], env=env)
            for chain in lanes(data, args.out, mode, copy)
        ]  # fmt: skip
        if any([chain.wait() != 0 for chain in chains]):  # a list: both are waited for
            return 1
    print(table(args.out, args.mode, args.copy_bound))
    return 0


if __name__ == "__main__":
    sys.exit(main())
