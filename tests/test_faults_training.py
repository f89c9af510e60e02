"""Crash safety of `train` and `finetune` (the fast slice of benchmarks/faults.py): a real SIGKILL inside a checkpoint
write, with half a metrics record on disk, before the final weights are renamed into place, or between the parts of a
fine-tuned model folder; the rerun ends on the uninterrupted weights, metrics and losses, with no temporary file.
The training runs use a model with dropout (faultkit.train_job), so a resume must also replay the forward's draws."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from . import faultkit
from .helpers import make_class_folders, run_cli


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def data(root: Path) -> Path:
    return make_class_folders(root / "data", {"001.cat": 8, "002.dog": 8, "003.eel": 8}, size=32)


@pytest.fixture(scope="module")
def synthetic(root: Path, data: Path) -> Path:
    """A real filtered generation run of the tiny preset (one counterpart per image, all kept)."""
    out = root / "synthetic"
    result = run_cli("augment", data, "-o", out, *faultkit.TINY_GENERATION, "--embedder", "tiny", "--threshold", "-1")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def trained(root: Path, data: Path, synthetic: Path) -> tuple[faultkit.Job, faultkit.Reference]:
    job = faultkit.train_job(data, synthetic, max_steps=9)
    return job, faultkit.reference(job, root / "train-reference")


def _assert_survived(trial: faultkit.Trial, kills: int) -> None:
    assert trial.landed == kills, f"{trial.kills}: {trial.landed} kill(s) landed"
    assert trial.ok, f"{trial.kills}: {trial.problem}"


def test_a_train_killed_in_a_checkpoint_then_mid_record_resumes_to_the_uninterrupted_weights(
    trained: tuple[faultkit.Job, faultkit.Reference], tmp_path: Path
) -> None:
    job, ref = trained
    assert ref.writes["checkpoint"] == 5  # steps 2, 4, 6, 8 and the last
    # inside the second checkpoint's write (the first holds: the metrics logged after it must be dropped; it is at
    # step 2 of an epoch of 3, so the rerun starts a data iterator where the uninterrupted run did not), then half
    # of a metrics record of the rerun
    _assert_survived(faultkit.trial(job, tmp_path / "run", ref, [("checkpoint", 2), ("metrics", 3)]), 2)


def test_a_train_killed_before_its_final_weights_are_renamed_reruns_to_them(
    trained: tuple[faultkit.Job, faultkit.Reference], tmp_path: Path
) -> None:
    job, ref = trained
    trial = faultkit.trial(job, tmp_path / "run", ref, [("model", 1)])
    _assert_survived(trial, 1)
    assert trial.temporaries_after_kills == 1  # model.pt's, never renamed; removed by the rerun


@pytest.fixture(scope="module")
def finetuned(root: Path, data: Path) -> tuple[faultkit.Job, faultkit.Reference]:
    job = faultkit.finetune_job(data)
    return job, faultkit.reference(job, root / "finetune-reference")


def test_a_finetune_killed_in_a_checkpoint_then_between_model_parts_resumes_to_the_uninterrupted_model(
    finetuned: tuple[faultkit.Job, faultkit.Reference], tmp_path: Path
) -> None:
    job, ref = finetuned
    assert ref.writes["checkpoint"] >= 3
    # the checkpoint at the VAE's end, then mid-way through replacing the model's folders (text encoder in place,
    # UNet not yet)
    _assert_survived(faultkit.trial(job, tmp_path / "model", ref, [("checkpoint", 2), ("unet", 1)]), 2)


def test_a_train_stopped_by_sigterm_to_its_process_group_says_so_in_one_line_leaves_nothing_and_resumes(
    trained: tuple[faultkit.Job, faultkit.Reference], tmp_path: Path
) -> None:
    job, ref = trained
    out = faultkit.fresh(job, tmp_path / "run")
    # to the whole process group, as Slurm and `timeout` send it: the DataLoader workers get it too
    with_workers = dataclasses.replace(job, args=(*job.args, "--workers", "2"))
    stopped = faultkit.run_signalled(with_workers, out, signal.SIGTERM, after=("checkpoint", 1), group=True)
    faultkit.assert_stopped(stopped, job, out, signal.SIGTERM)
    faultkit.assert_resumes(job, out, ref)


@pytest.mark.slow  # four more training runs: make test-all
def test_a_train_with_dataloader_workers_stopped_by_sigterm_to_its_group_at_four_moments_says_so_in_one_line_each_time(
    trained: tuple[faultkit.Job, faultkit.Reference], tmp_path: Path
) -> None:
    """Mid-step, amid a checkpoint, while an epoch starts its workers: torch's workers die of the group's SIGTERM, and
    neither their parent's check for dead workers nor a stop landing in a finaliser may add a line or keep it going."""
    job, _ = trained
    with_workers = dataclasses.replace(job, args=(*job.args, "--workers", "2"))
    for n in (1, 4, 7, 10):
        out = faultkit.fresh(job, tmp_path / f"run-{n}")
        stopped = faultkit.run_signalled(with_workers, out, signal.SIGTERM, after=("metrics", n), group=True)
        faultkit.assert_stopped(stopped, job, out, signal.SIGTERM)


def test_a_finetune_stopped_by_sigterm_while_saving_its_model_leaves_no_temporary_folder_and_resumes(
    finetuned: tuple[faultkit.Job, faultkit.Reference], tmp_path: Path
) -> None:
    job, ref = finetuned
    out = faultkit.fresh(job, tmp_path / "model")
    # between the model's folders: the text encoder in place, the UNet still in the temporary folder
    stopped = faultkit.run(job, out, kill_at=("unet", 1), signum=signal.SIGTERM)
    faultkit.assert_stopped(stopped, job, out, signal.SIGTERM)
    faultkit.assert_resumes(job, out, ref)


@pytest.mark.slow  # two more fine-tuning runs: make test-all
def test_a_finetune_stopped_by_sighup_to_its_process_group_mid_training_resumes_to_the_uninterrupted_model(
    finetuned: tuple[faultkit.Job, faultkit.Reference], tmp_path: Path
) -> None:
    job, ref = finetuned
    out = faultkit.fresh(job, tmp_path / "model")
    # a closed terminal's SIGHUP, to the process group, after the first checkpoint
    stopped = faultkit.run_signalled(job, out, signal.SIGHUP, after=("checkpoint", 1), group=True)
    faultkit.assert_stopped(stopped, job, out, signal.SIGHUP)
    faultkit.assert_resumes(job, out, ref)
