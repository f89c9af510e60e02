"""Crash safety of `augment`, `filter` and `report` (the fast slice of benchmarks/faults.py): a real SIGKILL at a
write phase (inside an image write, with half a manifest record on disk, before a link of the relayout...) or at a
seeded moment, once or twice, and the rerun equals the uninterrupted run with no temporary file left."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from diffcoremix.filter import FilterConfig, filter_run

from . import faultkit
from .helpers import make_class_folders, run_cli


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def data(root: Path) -> Path:
    return make_class_folders(root / "data", {"001.cat": 2, "002.dog": 2, "003.eel": 1}, size=32)


@pytest.fixture(scope="module")
def generated(root: Path, data: Path) -> Path:
    """A generated, unfiltered run (what `filter` starts from), made with the harness's tiny options."""
    out = root / "generated"
    result = run_cli("generate", data, "-o", out, *faultkit.TINY_GENERATION, "--per-image", "2", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def threshold(generated: Path, root: Path) -> float:
    """The median score of the generated candidates: about half of each round is rejected."""
    probe = faultkit.fresh(faultkit.filter_job(generated, -1.0), root / "probe")
    report = filter_run(probe, FilterConfig(embedder="tiny", threshold=-1.0))
    return float(np.median([s for c in report.classes.values() for s in c.scores]))


@pytest.fixture(scope="module")
def augmented(root: Path, data: Path, threshold: float) -> tuple[faultkit.Job, faultkit.Reference, Path]:
    job = faultkit.augment_job(data, threshold)
    out = root / "augment-reference"
    return job, faultkit.reference(job, out), out


def _assert_survived(trial: faultkit.Trial, kills: int) -> None:
    assert trial.landed == kills, f"{trial.kills}: {trial.landed} kill(s) landed"
    assert trial.ok, f"{trial.kills}: {trial.problem}"


def test_the_reference_run_writes_in_every_phase(augmented: tuple[faultkit.Job, faultkit.Reference, Path]) -> None:
    _, ref, _ = augmented
    for phase in ("settings", "image", "manifest", "embedding", "decisions", "relayout", "layout", "augment-record"):
        assert ref.writes[phase] >= 1, phase
    assert ref.writes["decisions"] >= 2  # more than one round: regenerations were made
    assert ref.writes["other"] == 0, "a write outside the phases the harness knows"


def test_a_record_torn_in_half_then_a_kill_amid_the_embeddings_rerun_to_the_uninterrupted_result(
    augmented: tuple[faultkit.Job, faultkit.Reference, Path], tmp_path: Path
) -> None:
    job, ref, _ = augmented
    # half of the first batch's final records on disk (its images are written, and named only by the batch's
    # "writing" records); then, in the rerun, a kill when half of the embeddings are cached (the rest must be computed
    # in the batches an uninterrupted run used: batched float32 rounds by batch)
    points = [("manifest", 2), ("embedding", ref.writes["embedding"] // 2 + 1)]
    _assert_survived(faultkit.trial(job, tmp_path / "out", ref, points), 2)


@pytest.mark.slow  # one more augment trial: make test-all (benchmarks/faults.py kills in every phase)
def test_augment_killed_as_it_records_its_rounds_finished_reruns_to_the_uninterrupted_result(
    augmented: tuple[faultkit.Job, faultkit.Reference, Path], tmp_path: Path
) -> None:
    job, ref, _ = augmented
    # the last write of augment.json (every round done, the record about to say so); the rerun replays the rounds
    assert ref.writes["augment-record"] == 2  # unfinished before the first round, finished after the last
    _assert_survived(faultkit.trial(job, tmp_path / "out", ref, [("augment-record", 2)]), 1)


@pytest.mark.slow  # heavy; make test-all (augment's image and link phases: benchmarks/faults.py runs 42 augment trials)
def test_two_kills_in_an_image_write_then_before_a_link_rerun_to_the_uninterrupted_result(
    augmented: tuple[faultkit.Job, faultkit.Reference, Path], tmp_path: Path
) -> None:
    job, ref, _ = augmented
    # a late image (a regeneration round), then the first link that the rerun makes
    trial = faultkit.trial(job, tmp_path / "out", ref, [("image", ref.writes["image"] - 2), ("relayout", 1)])
    _assert_survived(trial, 2)


@pytest.mark.slow  # benchmarks/faults.py counts 50 seeded-moment trials: make test-all
def test_augment_killed_at_a_seeded_moment_reruns_to_the_uninterrupted_result(
    augmented: tuple[faultkit.Job, faultkit.Reference, Path], tmp_path: Path
) -> None:
    job, ref, _ = augmented
    moment = faultkit.moments(ref, 1, seed=3)
    _assert_survived(faultkit.trial(job, tmp_path / "out", ref, moment), 1)


def test_a_filter_killed_twice_reruns_to_the_uninterrupted_result(
    generated: Path, threshold: float, tmp_path: Path
) -> None:
    job = faultkit.filter_job(generated, threshold)
    ref = faultkit.reference(job, tmp_path / "reference")
    assert ref.writes["image"] == ref.writes["manifest"] == 0  # filter writes no candidate
    points = [("embedding", ref.writes["embedding"] // 2), ("decisions", 1)]
    _assert_survived(faultkit.trial(job, tmp_path / "out", ref, points), 2)


@pytest.mark.slow  # heavy; make test-all (report's phases: benchmarks/faults.py runs 15 report trials)
def test_a_report_killed_while_writing_the_page_reruns_to_the_same_page(
    augmented: tuple[faultkit.Job, faultkit.Reference, Path], tmp_path: Path
) -> None:
    job = faultkit.report_job(augmented[2])
    ref = faultkit.reference(job, tmp_path / "reference")
    assert ref.writes["report"] == 1
    trial = faultkit.trial(job, tmp_path / "out", ref, [("report", 1)])
    _assert_survived(trial, 1)
    assert trial.temporaries_after_kills == 1  # the page that was never renamed, removed by the rerun


def test_augment_stopped_by_sigterm_in_an_embedding_write_says_so_in_one_line_leaves_nothing_and_reruns_to_the_result(
    augmented: tuple[faultkit.Job, faultkit.Reference, Path], tmp_path: Path
) -> None:
    job, ref, _ = augmented
    out = faultkit.fresh(job, tmp_path / "run")
    # at an embedding's write point: the cache entry's temporary file is on disk
    stopped = faultkit.run(job, out, kill_at=("embedding", ref.writes["embedding"] // 2), signum=signal.SIGTERM)
    faultkit.assert_stopped(stopped, job, out, signal.SIGTERM)
    faultkit.assert_resumes(job, out, ref)


@pytest.mark.slow  # two more augment runs: make test-all
def test_augment_stopped_by_sigterm_from_outside_reruns_to_the_uninterrupted_result(
    augmented: tuple[faultkit.Job, faultkit.Reference, Path], tmp_path: Path
) -> None:
    job, ref, _ = augmented
    out = faultkit.fresh(job, tmp_path / "run")
    # to the command's process alone (as Kubernetes stops a container), after its first image
    stopped = faultkit.run_signalled(job, out, signal.SIGTERM, after=("image", 1))
    faultkit.assert_stopped(stopped, job, out, signal.SIGTERM)
    faultkit.assert_resumes(job, out, ref)
