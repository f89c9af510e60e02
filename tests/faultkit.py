"""The crash-safety harness: kill a real ``diffcoremix`` command at a chosen write or a seeded moment, rerun it,
and compare with an uninterrupted run.

A *job* is one command line of the tool with the output it writes, the write phases of that output (a glob per
phase, relative to the output) and a *state*: what must be equal between an uninterrupted run and a killed then
resumed one (manifest rows without wall times, decisions, image and weight hashes...). Kills are real SIGKILLs:

- at a write phase: the child process kills itself at the N-th write point of the phase
  (:mod:`diffcoremix.faults`: before the rename of an atomic write, with half of an appended record on disk,
  before a hard link);
- at a seeded moment: the harness kills the child after a seeded random delay, counted from the end of the child's
  start-up (:func:`diffcoremix.faults.started`: arguments parsed, torch imported; a kill during imports would prove
  nothing), within the time the uninterrupted run took from there to its end.

A stop signal (SIGTERM, SIGHUP: what Slurm, Kubernetes and ``timeout`` send) is sent the same two ways: by the child
to itself at a write point (``run(..., signum=...)``), or by the harness as soon as the child's trace shows a given
write (:func:`run_signalled`), to the child alone or to its process group (its DataLoader workers too).

Used by ``tests/test_faults.py`` (a fast slice) and ``benchmarks/faults.py`` (the full count, RELIABILITY.md).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcoremix.faults import FAULT_ENV, SIGNAL_ENV, START_MARK, TRACE_ENV
from diffcoremix.scratch import SCRATCH_DIR, TMP_SUFFIX

TIMEOUT = 600


@dataclass(frozen=True)
class Job:
    """One command of the tool under test.

    Args:
        name: a short name (``augment``).
        args: the command line after ``diffcoremix``; ``{out}`` stands for the output path.
        phases: phase name -> glob of the written paths, relative to the output (``images/*``).
        state: what must be equal after a resumed run: a JSON-able value computed from the output path.
        prepare: fills a fresh output path before the first run (``filter`` starts from a generated run).
    """

    name: str
    args: tuple[str, ...]
    phases: dict[str, str]
    state: Callable[[Path], Any]
    prepare: Callable[[Path], None] | None = None

    def command(self, out: Path) -> list[str]:
        return [sys.executable, "-m", "diffcoremix", "-q", *(a.replace("{out}", str(out)) for a in self.args)]

    def phase_of(self, out: Path, written: str) -> str | None:
        for phase, glob in self.phases.items():
            if fnmatch.fnmatchcase(written, f"{out.absolute().as_posix()}/{glob}"):
                return phase
        return None


@dataclass
class Outcome:
    """What one attempt did: its exit status and how many write points each phase passed."""

    returncode: int
    stderr: str
    writes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, TRACE_ENV, SIGNAL_ENV)}
    # One torch thread in every run: the bytes of an image depend on the thread count (README, determinism).
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def fresh(job: Job, out: Path) -> Path:
    """An output path ready for a first run (removed if it exists, then prepared)."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if job.prepare is not None:
        job.prepare(out)
    return out


def _count(job: Job, out: Path, trace: Path) -> Counter[str]:
    lines = trace.read_text(encoding="utf-8").splitlines() if trace.is_file() else []
    return Counter(job.phase_of(out, line) or "other" for line in lines if line != START_MARK)


def run(
    job: Job, out: Path, *, kill_at: tuple[str, int] | None = None, signum: signal.Signals = signal.SIGKILL
) -> Outcome:
    """Run the job on ``out``; with ``kill_at=(phase, n)`` the child kills itself at that phase's n-th write (or
    sends itself ``signum`` there)."""
    trace = out.parent / f".{out.name}.trace"
    trace.unlink(missing_ok=True)
    extra = {TRACE_ENV: str(trace)}
    if kill_at is not None:
        phase, n = kill_at
        extra[FAULT_ENV] = f"{out.absolute().as_posix()}/{job.phases[phase]}@{n}"
        extra[SIGNAL_ENV] = signum.name
    start = time.monotonic()
    done = subprocess.run(
        job.command(out), capture_output=True, text=True, env=_env(extra), timeout=TIMEOUT, check=False
    )
    outcome = Outcome(done.returncode, done.stderr, _count(job, out, trace), time.monotonic() - start)
    trace.unlink(missing_ok=True)
    return outcome


def run_killed_at_moment(job: Job, out: Path, delay: float) -> Outcome:
    """Run the job and SIGKILL it ``delay`` seconds after its start-up (if it is still running then)."""
    return _watch(job, out, delay)[0]


def _watch(job: Job, out: Path, delay: float) -> tuple[Outcome, float]:
    """Run the job, SIGKILL it ``delay`` seconds after its start-up if it still runs (``math.inf``: never); its
    outcome, and how long it ran after its start-up."""
    trace = out.parent / f".{out.name}.trace"
    trace.unlink(missing_ok=True)
    start = time.monotonic()
    child = subprocess.Popen(
        job.command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=_env({TRACE_ENV: str(trace)}),
    )  # fmt: skip
    try:
        while not (trace.is_file() and trace.stat().st_size) and child.poll() is None:
            time.sleep(0.005)
        started = time.monotonic()
        while child.poll() is None and time.monotonic() - started < delay:
            time.sleep(0.005)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        _, stderr = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    end = time.monotonic()
    outcome = Outcome(child.returncode, stderr, _count(job, out, trace), end - start)
    trace.unlink(missing_ok=True)
    return outcome, end - started


def run_signalled(
    job: Job, out: Path, signum: signal.Signals, after: tuple[str, int], *, group: bool = False, tries: int = 3
) -> Outcome:
    """Run the job and send it ``signum`` as soon as its trace shows the ``after=(phase, n)``-th write, to the child
    alone or, with ``group``, to its whole process group (its DataLoader workers too), as Slurm and ``timeout`` do.
    The signal lands wherever the child has got to by then: the writes go on while the harness reads the trace.

    On a loaded machine the child may finish before the harness has read that write: such an attempt says nothing
    about the signal, and is made again on a fresh ``out`` (``tries`` in all; then the trial fails as such)."""
    for _ in range(tries):
        outcome, sent = _signalled_once(job, fresh(job, out), signum, after, group)
        if sent:
            return outcome
    raise AssertionError(f"{job.name} ended before the harness could signal it after {after}, {tries} times")


def _signalled_once(
    job: Job, out: Path, signum: signal.Signals, after: tuple[str, int], group: bool
) -> tuple[Outcome, bool]:
    trace = out.parent / f".{out.name}.trace"
    trace.unlink(missing_ok=True)
    start = time.monotonic()
    child = subprocess.Popen(
        job.command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=_env({TRACE_ENV: str(trace)}), start_new_session=group,
    )  # fmt: skip
    phase, n = after
    sent = False
    try:
        while child.poll() is None and _count(job, out, trace)[phase] < n:
            time.sleep(0.005)
        if child.poll() is None:
            (os.killpg if group else os.kill)(child.pid, signum)
            sent = True
        _, stderr = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    outcome = Outcome(child.returncode, stderr, _count(job, out, trace), time.monotonic() - start)
    trace.unlink(missing_ok=True)
    return outcome, sent


def leftovers(out: Path) -> list[str]:
    """What a stopped run must not leave below ``out``: lock files, temporary files or folders, and anything in our
    temporary folder ``.diffcoremix-tmp``."""
    locks = [p.name for p in out.glob(".diffcoremix*.lock")]
    held = [p.relative_to(out).as_posix() for d in out.rglob(".diffcoremix-tmp") for p in d.rglob("*")]
    return sorted({*locks, *temporaries(out), *held})


def assert_stopped(outcome: Outcome, job: Job, out: Path, signum: signal.Signals) -> None:
    """A run that a stop signal ended cleanly: exit status 128 + the signal's number, one line on stderr naming it,
    no lock and no temporary file left in ``out``."""
    assert outcome.returncode == 128 + signum, f"exit status {outcome.returncode}: {outcome.stderr[-2000:]}"
    line = f"diffcoremix {job.args[0]}: error: terminated ({signum.name})"
    assert outcome.stderr.splitlines() == [line], f"stderr: {outcome.stderr[-2000:]}"
    left = leftovers(out)
    assert not left, f"left in {out}: {left}"


def assert_resumes(job: Job, out: Path, ref: Reference) -> None:
    """A rerun on ``out`` ends with the reference's state and no temporary file."""
    final = run(job, out)
    assert final.returncode == 0, f"the rerun failed: {final.stderr[-2000:]}"
    state = job.state(out)
    assert state == ref.state, f"state differs: {describe_difference(state, ref.state)}"
    assert not temporaries(out), f"temporary files left: {temporaries(out)}"


def killed(outcome: Outcome) -> bool:
    return outcome.returncode == -signal.SIGKILL


def temporaries(out: Path) -> list[str]:
    """Temporary files or folders of our writers left below ``out`` (names ending in ``.tmp``), and scratch folders
    (``.diffcoremix-tmp``: the last user of one removes it)."""
    return sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == SCRATCH_DIR
    )


@dataclass
class Reference:
    """An uninterrupted run: its state, the writes of each phase, and how long it ran after its start-up."""

    state: Any
    writes: Counter[str]
    span: float


def reference(job: Job, out: Path) -> Reference:
    """Run the job uninterrupted on a fresh ``out``; its state and its writes per phase."""
    fresh(job, out)
    outcome, span = _watch(job, out, math.inf)
    assert outcome.returncode == 0, f"{job.name} failed uninterrupted: {outcome.stderr}"
    return Reference(job.state(out), outcome.writes, span)


@dataclass
class Trial:
    """One killed-and-resumed trial: the kills that landed, the temporary files they left, and whether the final
    rerun equals the reference and left none."""

    kills: list[str]
    landed: int = 0
    temporaries_after_kills: int = 0
    equal: bool = False
    clean: bool = False
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.equal and self.clean


def trial(job: Job, out: Path, ref: Reference, kills: Sequence[tuple[str, int] | float]) -> Trial:
    """Kill the job once per entry of ``kills`` (a write ``(phase, n)`` or a moment in seconds), each on a rerun
    of the one before, then rerun it to the end; compare with the reference and look for temporary files.

    A kill that does not land (the run ended first) is not counted; the trial goes on.
    """
    fresh(job, out)
    result = Trial([])
    for kill in kills:
        if isinstance(kill, tuple):
            outcome = run(job, out, kill_at=kill)
            result.kills.append(f"{kill[0]}#{kill[1]}")
        else:
            outcome = run_killed_at_moment(job, out, kill)
            result.kills.append(f"t+{kill:.2f}s")
        if killed(outcome):
            result.landed += 1
        elif outcome.returncode != 0:
            result.problem = f"a rerun failed: {outcome.stderr.strip()[-500:]}"
            return result
    result.temporaries_after_kills = sum(name.endswith(TMP_SUFFIX) for name in temporaries(out))  # files, not folders
    final = run(job, out)
    if final.returncode != 0:
        result.problem = f"the final rerun failed: {final.stderr.strip()[-500:]}"
        return result
    state = job.state(out)
    left = temporaries(out)
    result.equal, result.clean = state == ref.state, not left
    if not result.equal:
        result.problem = f"state differs: {describe_difference(state, ref.state)}"
    if left:
        result.problem += f" temporary files left: {left[:5]}"
    result.problem = result.problem.strip()
    return result


def describe_difference(ours: Any, theirs: Any) -> str:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = sorted(set(ours) ^ set(theirs)) or sorted(k for k in ours if ours[k] != theirs[k])
        return f"keys {keys[:5]}"
    return "values differ"


def write_kills(ref: Reference, phases: Sequence[str] | None = None, per_phase: int = 3) -> list[tuple[str, int]]:
    """Kill points spread over each phase's writes of the reference run: first, middle and last (``per_phase``
    of them, evenly spaced; 0 means every write)."""
    points = []
    for phase in phases or sorted(p for p in ref.writes if p != "other"):
        n = ref.writes[phase]
        if n == 0:
            continue
        chosen = range(1, n + 1) if per_phase == 0 or per_phase >= n else _spread(n, per_phase)
        points.extend((phase, i) for i in chosen)
    return points


def _spread(n: int, k: int) -> list[int]:
    if k == 1:
        return [1]
    return sorted({1 + round(i * (n - 1) / (k - 1)) for i in range(k)})


def moments(ref: Reference, count: int, seed: int) -> list[float]:
    """``count`` seeded moments within the time the reference run took after its start-up."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, ref.span) for _ in range(count)]


# States -------------------------------------------------------------------------------------------------------


def file_hashes(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file below ``folder`` (lock files and ``skip`` prefixes aside)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".diffcoremix")
        and not p.relative_to(folder).as_posix().startswith(skip)
    }


def generation_state(out: Path) -> dict[str, Any]:
    """A generation run's state: manifest rows (wall times aside), decisions, and every other file's hash (the
    cache holds what was embedded, which a resumed run may embed again)."""
    from diffcoremix.generate import read_manifest
    from diffcoremix.manifest import read_decisions

    manifest = read_manifest(out).drop(columns=["seconds"])
    return {
        "manifest": json.loads(manifest.to_json(orient="records")),
        "decisions": json.loads(json.dumps(read_decisions(out), default=str)),
        "files": file_hashes(out, skip=("cache/", "manifest/")),
    }


def train_state(run: Path) -> dict[str, Any]:
    """A training run's state: metrics (times aside), the final weights, the samples drawn."""
    import torch

    from diffcoremix.train import read_metrics
    from diffcoremix.train.run import MODEL_FILE, SAMPLES_FILE, TIMING_KEYS

    weights = torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
    return {
        "metrics": [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in read_metrics(run)],
        "weights": {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in weights.items()},
        "samples": (run / SAMPLES_FILE).read_text(encoding="utf-8") if (run / SAMPLES_FILE).is_file() else "",
    }


def finetune_state(model: Path) -> dict[str, Any]:
    """A fine-tuned model's state: its weight files and its loss log."""
    return {
        "weights": {k: v for k, v in file_hashes(model).items() if k.endswith((".safetensors", ".bin"))},
        "loss": (model / "loss.jsonl").read_text(encoding="utf-8"),
    }


def page_state(target: Path) -> str:
    """A report page, its build time (to the minute) aside."""
    import re

    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "TIME", target.read_text(encoding="utf-8"))


# Jobs ---------------------------------------------------------------------------------------------------------

TINY_GENERATION = ("--preset", "tiny", "--num-inference-steps", "1", "--height", "32", "--width", "32", "--seed", "0")
GENERATION_PHASES = {
    "settings": "settings.json",
    "run-record": "run.json",
    "config": "*config.yaml",
    "image": "images/*",
    "manifest": "manifest/*",
    "embedding": "cache/*",
    "decisions": "filter.jsonl",
    "filter-report": "filter_report*",
    "relayout": "train/*",
    "relayout-rejected": "rejected/*",
    "layout": "layout.json",
    "augment-record": "augment.json",
}

RECORD_PHASES = {
    "settings": "settings.json",
    "run-record": "run.json",
    "config": "config.yaml",
    "layout": "layout.json",
}
TRAIN_PHASES = {
    **RECORD_PHASES,
    "checkpoint": "checkpoints/*",
    "metrics": "metrics.jsonl",
    "model": "model.pt",
    "summary": "summary.json",
}
FINETUNE_PHASES = {
    **RECORD_PHASES,
    "checkpoint": "checkpoints/*",
    "loss": "loss.jsonl",
    "model-index": "model_index.json",
    "text-encoder": "text_encoder",
    "unet": "unet",
    "vae": "vae",
    "record": "finetune.json",
}


def augment_job(data: Path, threshold: float, per_image: int = 2) -> Job:
    """``augment`` with regeneration rounds (``threshold`` should reject part of each round)."""
    args = ("augment", str(data), "-o", "{out}", *TINY_GENERATION, "--per-image", str(per_image), "--batch-size", "2",
            "--embedder", "tiny", "--threshold", repr(threshold), "--retries", "2")  # fmt: skip
    return Job("augment", args, GENERATION_PHASES, generation_state)


def filter_job(generated: Path, threshold: float) -> Job:
    """``filter`` of a copy of the generated run ``generated``."""
    return Job(
        "filter",
        ("filter", "{out}", "--embedder", "tiny", "--threshold", repr(threshold)),
        GENERATION_PHASES,
        generation_state,
        prepare=lambda out: shutil.copytree(generated, out, symlinks=True),
    )


def train_job(data: Path, synthetic: Path, max_steps: int = 9) -> Job:
    """``train --method diffcoremix`` on ``data`` and the filtered run ``synthetic``, a checkpoint every 2 steps.

    The model is timm's ``rexnet_100`` (3.5 M parameters, as fast as ResNet-20 at 32 px): its dropout before the
    classifier draws from torch's global generator in every forward pass, so a resumed run must draw what the
    uninterrupted one drew, not only restore the weights, the optimizer and the data position.
    """
    args = ("train", str(data), "-o", "{out}", "--synthetic", str(synthetic), "--test", str(data), "--model",
            "rexnet_100", "-b", "8", "--img-size", "32", "--method", "diffcoremix", "--mix-prob", "1", "--max-steps",
            str(max_steps), "--checkpoint-every", "2")  # fmt: skip
    return Job("train", args, TRAIN_PHASES, train_state)


def finetune_job(data: Path) -> Job:
    """``finetune`` of the tiny model: 2 VAE steps, then 6 UNet steps, a checkpoint every 2."""
    args = ("finetune", str(data), "-o", "{out}", "--preset", "tiny", "--vae-steps", "2", "--max-steps", "6",
            "--batch-size", "4", "--checkpointing-steps", "2")  # fmt: skip
    return Job("finetune", args, FINETUNE_PHASES, finetune_state)


def report_job(run_folder: Path) -> Job:
    """``report`` of a finished run, written to OUT/report.html."""
    return Job(
        "report",
        ("report", str(run_folder), "-o", "{out}/report.html"),
        {"report": "report.html"},
        lambda out: page_state(out / "report.html"),
    )
