"""The full count of the crash-safety harness (tests/faultkit.py; tests/test_faults_*.py run a slice of it).

For each of `augment`, `filter`, `train`, `finetune` and `report` on the tiny models: one uninterrupted reference
run, then

- a single SIGKILL at spread writes of every write phase (first, middle and last of each phase by default;
  ``--per-phase 0``: every write), each followed by a rerun to the end;
- double kills: a kill at a seeded write, a kill of the rerun at another seeded write, then a rerun to the end;
- kills at seeded moments, counted from the end of the child's start-up (never during imports), single and double.

Each final rerun must exit 0, equal the reference (manifest rows without wall times, decisions, image hashes,
weights, metrics, the page) and leave no temporary file. The table it prints goes into RELIABILITY.md.

    python benchmarks/faults.py                       # every job, 3 writes per phase, 8 moments, 4 doubles
    python benchmarks/faults.py --jobs augment --per-phase 0 --moments 20
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import faultkit
from tests.helpers import make_class_folders, run_cli

JOBS = ("augment", "filter", "train", "finetune", "report")


@dataclass
class Tally:
    trials: int = 0
    kills_asked: int = 0
    kills_landed: int = 0
    equal: int = 0
    clean: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, trial: faultkit.Trial, asked: int) -> None:
        self.trials += 1
        self.kills_asked += asked
        self.kills_landed += trial.landed
        self.equal += trial.equal
        self.clean += trial.clean
        if not trial.ok:
            self.failures.append(f"{trial.kills}: {trial.problem}")


def _setup(root: Path) -> dict[str, Callable[[], faultkit.Job]]:
    data = make_class_folders(root / "data", {"001.cat": 2, "002.dog": 2, "003.eel": 1}, size=32)
    train_data = make_class_folders(root / "train-data", {"001.cat": 8, "002.dog": 8, "003.eel": 8}, size=32)
    generated = root / "generated"
    done = run_cli(
        "generate", data, "-o", generated, *faultkit.TINY_GENERATION, "--per-image", "2", "--batch-size", "2"
    )
    assert done.returncode == 0, done.stderr
    synthetic = root / "synthetic"
    done = run_cli("augment", train_data, "-o", synthetic, *faultkit.TINY_GENERATION, "--embedder", "tiny",
                   "--threshold", "-1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    probe = faultkit.fresh(faultkit.filter_job(generated, -1.0), root / "probe")
    from diffcoremix.filter import FilterConfig, filter_run

    report = filter_run(probe, FilterConfig(embedder="tiny", threshold=-1.0))
    scores = sorted(s for c in report.classes.values() for s in c.scores)
    threshold = scores[len(scores) // 2]
    return {
        "augment": lambda: faultkit.augment_job(data, threshold),
        "filter": lambda: faultkit.filter_job(generated, threshold),
        "train": lambda: faultkit.train_job(train_data, synthetic),
        "finetune": lambda: faultkit.finetune_job(data),
        "report": lambda: faultkit.report_job(synthetic),
    }


def _plans(ref: faultkit.Reference, args: argparse.Namespace, seed: int) -> list[list[tuple[str, int] | float]]:
    rng = random.Random(seed)
    writes: list[list[tuple[str, int] | float]] = [[p] for p in faultkit.write_kills(ref, per_phase=args.per_phase)]
    phases = [p for p in ref.writes if p != "other" and ref.writes[p]]
    doubles: list[list[tuple[str, int] | float]] = []
    for _ in range(args.doubles):
        first = rng.choice(phases)
        second = rng.choice(phases)
        # the rerun writes fewer times than the reference: the second kill is early in its phase
        doubles.append(
            [(first, rng.randint(1, ref.writes[first])), (second, rng.randint(1, max(1, ref.writes[second] // 2)))]
        )
    moments: list[list[tuple[str, int] | float]] = [[m] for m in faultkit.moments(ref, args.moments, seed)]
    moments += [faultkit.moments(ref, 2, seed + 1 + i) for i in range(args.moments // 4)]
    return writes + doubles + moments


def _run_one(
    job: faultkit.Job, out: Path, ref: faultkit.Reference, plan: list[tuple[str, int] | float]
) -> tuple[str, faultkit.Trial, int]:
    kind = "moment" if isinstance(plan[0], float) else "double" if len(plan) > 1 else "write"
    return kind, faultkit.trial(job, out, ref, plan), len(plan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default=",".join(JOBS), help="comma-separated, of: " + ", ".join(JOBS))
    parser.add_argument("--per-phase", type=int, default=3, help="writes killed per phase (0: every write)")
    parser.add_argument("--doubles", type=int, default=4, help="double kills at seeded writes, per job")
    parser.add_argument(
        "--moments", type=int, default=8, help="single kills at seeded moments per job (and a quarter as many double)"
    )
    parser.add_argument("--parallel", type=int, default=2, help="trials run side by side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        parser.error(f"unknown job(s) {unknown}; known: {', '.join(JOBS)}")
    with tempfile.TemporaryDirectory(prefix="dcm-faults-") as tmp:
        root = Path(tmp)
        makers = _setup(root)
        rows = []
        for name in jobs:
            start = time.monotonic()
            job = makers[name]()
            ref = faultkit.reference(job, root / f"{name}-reference")
            plans = _plans(ref, args, args.seed)
            tally = {"write": Tally(), "double": Tally(), "moment": Tally()}

            with ThreadPoolExecutor(args.parallel) as pool:
                folders = [root / f"{name}-{i}" for i in range(len(plans))]
                for kind, trial, asked in pool.map(_run_one, [job] * len(plans), folders, [ref] * len(plans), plans):
                    tally[kind].add(trial, asked)
            seconds = time.monotonic() - start
            phases = sorted(p for p in ref.writes if p != "other" and ref.writes[p])
            for kind, t in tally.items():
                rows.append((name, kind, t, len(phases) if kind == "write" else 0))
                for failure in t.failures:
                    print(f"FAILED {name} {kind}: {failure}", file=sys.stderr)
            print(f"{name}: {len(plans)} trials in {seconds:.0f} s; phases: "
                  + ", ".join(f"{p} {ref.writes[p]}" for p in phases), flush=True)  # fmt: skip
    print()
    print("| command | kills | trials | phases | kills landed | reran equal | no temporary file |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, kind, t, phases in rows:
        label = {"write": "at each phase's writes", "double": "two, at seeded writes", "moment": "at seeded moments"}
        print(f"| {name} | {label[kind]} | {t.trials} | {phases or ''} | {t.kills_landed} of {t.kills_asked} | "
              f"{t.equal} of {t.trials} | {t.clean} of {t.trials} |")  # fmt: skip
    failed = sum(len(t.failures) for _, _, t, _ in rows)
    print(f"\n{failed} failed trial(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
