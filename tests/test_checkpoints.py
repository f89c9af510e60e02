"""No load takes a pickle on trust: a booby-trapped checkpoint, model or embedder file is refused in one line and its
code never runs (issue 26, item 7).

The trap is a real pickle whose ``__reduce__`` makes a folder when unpickled: a load that ran it leaves the folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from diffcoremix.checkpoints import UnsafeCheckpointError, load_torch_file
from diffcoremix.embedders.models import load_embedder
from diffcoremix.embedders.resnet20 import read_cifar_state
from diffcoremix.errors import ModelLoadError
from diffcoremix.train.models import read_state_dict
from diffcoremix.train.run import load_run

from . import faultkit
from .helpers import make_class_folders, run_cli, save_tiny_hf_clip


class _Trap:
    """Unpickled, it makes ``marker`` (what any code in the file could do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _plant(path: Path, marker: Path, payload: dict[str, Any] | None = None) -> None:
    """Replace ``path`` with a torch file that holds the trap among (or instead of) ``payload``'s values."""
    torch.save({**(payload or {}), "trap": _Trap(marker)}, path)


def _assert_refused_in_one_line(result: Any, path: Path, marker: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "refused, since loading it could run code" in lines[0], lines[0]
    assert str(path) in lines[0], lines[0]
    assert not marker.exists(), "the file's code ran"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("data"), {"cat": 8, "dog": 8}, size=32)


def _train_job(data: Path) -> faultkit.Job:
    args = ("train", str(data), "-o", "{out}", "--model", "resnet20", "-b", "8", "--img-size", "32", "--max-steps",
            "6", "--checkpoint-every", "2")  # fmt: skip
    return faultkit.Job("train", args, faultkit.TRAIN_PHASES, faultkit.train_state)


def test_a_training_checkpoint_that_would_run_code_is_refused_and_deleting_it_restarts_the_run(
    data: Path, tmp_path: Path
) -> None:
    job, out, marker = _train_job(data), tmp_path / "run", tmp_path / "ran"
    stopped = faultkit.run(job, faultkit.fresh(job, out), kill_at=("checkpoint", 2))  # the step-2 one stays
    assert faultkit.killed(stopped), stopped.stderr
    (checkpoint,) = (out / "checkpoints").iterdir()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # ours loads without trust
    assert state["step"] == 2
    _plant(checkpoint, marker, state)

    _assert_refused_in_one_line(run_cli(*job.command(out)[3:]), checkpoint, marker)
    assert checkpoint.exists()  # refused, not deleted: it is the user's to judge

    checkpoint.unlink()  # what the line advises
    rerun = run_cli(*job.command(out)[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert faultkit.train_state(out) == faultkit.reference(job, tmp_path / "reference").state


@pytest.mark.slow  # 17 s; the training checkpoint test shows the same load in make test
def test_a_fine_tuning_checkpoint_that_would_run_code_is_refused(data: Path, tmp_path: Path) -> None:
    job, out, marker = faultkit.finetune_job(data), tmp_path / "model", tmp_path / "ran"
    stopped = faultkit.run(job, faultkit.fresh(job, out), kill_at=("loss", 2))  # after the first checkpoint
    assert faultkit.killed(stopped), stopped.stderr
    (checkpoint,) = (out / "checkpoints").iterdir()
    _plant(checkpoint, marker, torch.load(checkpoint, map_location="cpu", weights_only=True))
    _assert_refused_in_one_line(run_cli(*job.command(out)[3:]), checkpoint, marker)


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(load_run, id="run:RUN (eval, judge)"),
        pytest.param(lambda run: read_state_dict(run / "model.pt"), id="train --init"),
        pytest.param(lambda run: read_cifar_state(run / "model.pt"), id="resnet20:FILE embedder"),
    ],
)
def test_every_model_file_load_refuses_a_file_that_would_run_code(load: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _plant(tmp_path / "model.pt", marker, {"info": {"model": "resnet20"}, "state_dict": {}})
    with pytest.raises(UnsafeCheckpointError, match="refused, since loading it could run code"):
        load(tmp_path)
    assert not marker.exists()


def test_a_damaged_file_is_a_plain_read_error_not_a_safety_refusal(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match=r"cannot read checkpoint .*: not a torch file") as raised:
        load_torch_file(path)
    assert not isinstance(raised.value, UnsafeCheckpointError)
    assert "weights_only" not in str(raised.value)  # torch's advice to load without trust is not passed on


def test_no_module_but_checkpoints_calls_torch_load() -> None:
    """A new ``torch.load`` elsewhere would bypass the refusal: every load goes through :func:`load_torch_file`."""
    package = Path(__file__).resolve().parents[1] / "src" / "diffcoremix"
    callers = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"\btorch\.load\(|\bpickle\.loads?\(", path.read_text(encoding="utf-8"))
    )
    assert callers == ["checkpoints.py"]


def _trap_folder_weights(folder: Path, marker: Path) -> None:
    """Replace every weights file of a saved model folder with a trapped ``.bin`` of the same stem."""
    for weights in sorted(folder.rglob("*.safetensors")):
        weights.unlink()
        stem = weights.stem.removesuffix(".fp16")
        name = "pytorch_model.bin" if stem == "model" else f"{stem}.bin"
        torch.save({"trap": _Trap(marker)}, weights.with_name(name))


def test_a_transformers_clip_folder_whose_weights_would_run_code_is_refused_in_one_line(tmp_path: Path) -> None:
    folder, marker = save_tiny_hf_clip(tmp_path / "clip"), tmp_path / "ran"
    _trap_folder_weights(folder, marker)
    with pytest.raises(UnsafeCheckpointError, match="refused, since loading it could run code"):
        load_embedder(f"hf:{folder}")
    assert not marker.exists()


def test_a_diffusers_folder_whose_weights_would_run_code_is_refused_in_one_line(data: Path, tmp_path: Path) -> None:
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    folder, marker = tmp_path / "model", tmp_path / "ran"
    tiny_sd_pipeline(0).save_pretrained(folder)
    _trap_folder_weights(folder / "unet", marker)
    result = run_cli("generate", data, "-o", tmp_path / "out", "--model", folder, "--num-inference-steps", "1")
    # diffusers itself logs a line first ("no file named diffusion_pytorch_model.safetensors", as for any folder of
    # .bin files); the command's own error is one line, and the last
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    *_, last = result.stderr.strip().splitlines()
    assert last.startswith("diffcoremix generate: error: the model"), last
    assert "refused, since loading it could run code" in last, last
    assert not marker.exists()
