"""Nothing of the user's is touched, and no output folder gets stuck (issue "Trust, part two").

- Our temporary files live in a scratch folder of our own (``OUT/.diffcoremix-tmp``): a user's file whose name
  looks like one of ours survives every rerun, ``--overwrite`` and ``open_output``.
- A file our records name that the user has since replaced is left in place, with one warning.
- Every file and folder we write honours the umask.
- A damaged ``layout.json``, a file where a class folder of ``train/`` belongs, a lost or damaged ``run.json`` and a
  read-only OUT are each repaired, or answered by one line naming the command that repairs them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from diffcoremix import PromptsConfig
from diffcoremix.atomic import atomic_write_text
from diffcoremix.filter import FilterConfig, filter_run
from diffcoremix.generate import GenerateConfig, generate, read_manifest
from diffcoremix.manifest import OutputFolderError, open_output
from diffcoremix.scratch import SCRATCH_DIR, Scratch

from .helpers import cli_command, make_class_folders, run_in_process

TINY = GenerateConfig(preset="tiny", num_inference_steps=1, height=32, width=32)
KEEP_ALL = FilterConfig(embedder="tiny", threshold=-1.0)
REJECT_ALL = FilterConfig(embedder="tiny", threshold=1.0)
CLI_TINY = ("--preset", "tiny", "--num-inference-steps", "1", "--height", "32", "--width", "32", "--embedder",
            "tiny", "--threshold", "-1")  # fmt: skip


@pytest.fixture(autouse=True)
def _warnings_reach_caplog() -> Iterator[None]:
    # An in-process CLI test run earlier in this worker may have stopped our logger's propagation: undo it here.
    logger = logging.getLogger("diffcoremix")
    saved = logger.propagate, logger.level
    logger.propagate, logger.level = True, logging.INFO
    yield
    logger.propagate, logger.level = saved


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 2}, size=32)


def _augmented(data: Path, out: Path, config: FilterConfig = KEEP_ALL) -> Path:
    generate(data, out, PromptsConfig(), TINY)
    filter_run(out, config)
    return out


def _photo(path: Path, colour: str = "red") -> bytes:
    """The user's own photo, written at ``path`` (a new file: a link there is replaced, its image untouched)."""
    path.unlink(missing_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")
    return path.read_bytes()


# --- 1. temporary files: ours live in a folder of our own ---------------------------------------------------------


def test_a_users_files_named_like_temporaries_survive_reruns_overwrite_and_open_output(
    data: Path, tmp_path: Path
) -> None:
    out = _augmented(data, tmp_path / "out")
    theirs = [out / ".thesis.docx.v2.tmp", out / "train" / "001.cat" / ".x.png.y.tmp", out / ".settings.json.mine.tmp",
              out / "images" / "001.cat" / ".img_000.png.k0.png.r0-x9y8.tmp", out / "cache" / ".notes.tmp"]  # fmt: skip
    for path in theirs:
        path.write_text(f"the user's {path.name}")
    ours = out / SCRATCH_DIR / "r0-0123456789abcdef.tmp"  # a killed writer's leftover, in our scratch folder
    ours.parent.mkdir()
    ours.write_bytes(b"torn")

    filter_run(out, KEEP_ALL)  # a plain rerun
    assert not ours.exists()
    assert not (out / SCRATCH_DIR).exists()
    with open_output(out, data=data):
        pass
    generate(data, out, PromptsConfig(), TINY, overwrite=True)  # starting afresh
    filter_run(out, KEEP_ALL)
    assert all(p.read_text() == f"the user's {p.name}" for p in theirs)
    assert not (out / SCRATCH_DIR).exists()


def test_a_file_written_on_its_own_leaves_the_users_files_beside_it(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    theirs = tmp_path / ".report.html.mine.tmp"
    theirs.write_text("mine")
    leftover = tmp_path / SCRATCH_DIR / "0123456789abcdef.tmp"  # a killed write of the page, in our scratch folder
    leftover.parent.mkdir()
    leftover.write_text("torn")
    atomic_write_text(page, "<html></html>")
    assert page.read_text() == "<html></html>"
    assert theirs.read_text() == "mine"
    assert not (tmp_path / SCRATCH_DIR).exists()  # swept and removed


def test_a_scratch_folder_in_use_is_never_swept_and_the_last_user_removes_it(tmp_path: Path) -> None:
    first, second = Scratch(tmp_path), Scratch(tmp_path)
    assert first.open() == 0
    fd, in_flight = first.new_file("r0-")
    os.close(fd)
    assert second.open() == 0  # another holder: its files may be in flight, nothing is swept
    assert in_flight.exists()
    second.close()
    assert in_flight.exists()
    first.close()
    assert in_flight.exists()  # never removed by a close: only a sweep removes what a killed writer left
    (tmp_path / SCRATCH_DIR / "notes.txt").write_text("not a name of ours")
    third = Scratch(tmp_path)
    assert third.open() == 1  # alone: the leftover goes, the other file stays
    assert sorted(p.name for p in (tmp_path / SCRATCH_DIR).iterdir()) == [".lock", "notes.txt"]
    third.close()
    assert sorted(p.name for p in (tmp_path / SCRATCH_DIR).iterdir()) == ["notes.txt"]  # not ours: folder kept


def test_a_run_killed_inside_its_first_write_leaves_a_folder_its_rerun_takes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / SCRATCH_DIR).mkdir(parents=True)
    (out / SCRATCH_DIR / "0123456789abcdef.tmp").write_text('{"da')  # the run record, torn by a kill
    generate(data, out, PromptsConfig(), TINY)
    assert set(read_manifest(out).status) == {"ok"}
    assert not (out / SCRATCH_DIR).exists()
    # A name that only looks like one of ours is the user's: the folder is foreign, and the file stays.
    other = tmp_path / "other"
    other.mkdir()
    (other / ".run.json.x1y2.tmp").write_text('{"da')
    with pytest.raises(OutputFolderError, match="not empty and was not made by diffcoremix"):
        generate(data, other, PromptsConfig(), TINY)
    assert sorted(p.name for p in other.iterdir()) == [".run.json.x1y2.tmp"]


# --- 2. a file our records name, replaced by the user since, is not ours any more ---------------------------------


def test_a_photo_put_in_train_under_our_name_survives_rerun_refilter_and_overwrite(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _augmented(data, tmp_path / "out")
    view = sorted((out / "train" / "001.cat").glob("*.png"))[0]
    mine = _photo(view)
    for step in (
        lambda: filter_run(out, KEEP_ALL),  # a plain rerun
        lambda: filter_run(out, REJECT_ALL),  # re-filtered: the view would go
    ):
        caplog.clear()
        step()
        assert view.read_bytes() == mine
        changed = [r.getMessage() for r in caplog.records if "replaced or changed since" in r.getMessage()]
        assert len(changed) == 1, caplog.text
        assert changed[0].startswith(f"1 file(s) that diffcoremix wrote in {out} have been replaced")
        assert str(view) in changed[0]
    # Once left out of the views it is no file of ours any more: starting afresh leaves it, as any foreign file.
    caplog.clear()
    generate(data, out, PromptsConfig(), TINY, overwrite=True)
    assert view.read_bytes() == mine
    assert "1 entry not made by diffcoremix left in place: train" in caplog.text


def test_a_generated_image_replaced_by_the_user_is_kept_and_its_candidate_recorded_as_failed(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    reference = read_manifest(out)
    image = out / reference.output[0]
    mine = _photo(image, "blue")
    caplog.clear()
    generate(data, out, PromptsConfig(), TINY)  # a plain rerun: the image no longer holds what was recorded
    assert image.read_bytes() == mine
    row = read_manifest(out).set_index("key").loc[reference.key[0]]
    assert row.status == "blocked"
    assert f"{image} was replaced since diffcoremix wrote it" in row.error
    assert str(image) in caplog.text
    other = out / reference.output[1]
    theirs = _photo(other, "green")  # replaced, then straight to starting afresh: the manifest still names it as ours
    generate(data, out, PromptsConfig(), TINY, overwrite=True)  # starting afresh keeps both
    assert image.read_bytes() == mine
    assert other.read_bytes() == theirs
    other.unlink()
    image.rename(tmp_path / "mine.png")  # what the warning asks: then the rerun makes the image again
    generate(data, out, PromptsConfig(), TINY)
    again = read_manifest(out).set_index("key").loc[reference.key[0]]
    assert again.status == "ok"
    assert again.output_sha256 == reference.output_sha256[0]


# --- 3. permissions follow the umask --------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_and_folder_written_honours_the_umask(data: Path, tmp_path: Path, umask: int) -> None:
    from diffcoremix.report import build_report
    from diffcoremix.train import TrainConfig, train

    saved = os.umask(umask)
    try:
        out = _augmented(data, tmp_path / "out")
        build_report(out, tmp_path / "report.html")
        run = tmp_path / "run"
        config = TrainConfig(model="resnet20", batch_size=4, img_size=32, max_steps=2, checkpoint_every=1)
        train(data, output=run, config=config)
    finally:
        os.umask(saved)
    written = [tmp_path / "report.html", *out.rglob("*"), *run.rglob("*")]
    assert len(written) > 30
    for path in written:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == want, f"{path}: {oct(path.stat().st_mode)}"


# --- 4. no output folder gets stuck ---------------------------------------------------------------------------------


def test_a_damaged_layout_record_is_rebuilt_by_a_rerun_and_overwrite_works(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _augmented(data, tmp_path / "out")
    views = sorted(p.relative_to(out).as_posix() for p in (out / "train").rglob("*.png"))
    (out / "layout.json").write_text('{"files": [')
    filter_run(out, REJECT_ALL)  # the views all move: those in train/ are ours by their content, and go
    assert "layout.json is damaged" in caplog.text
    assert not list((out / "train").rglob("*.png"))
    assert len(list((out / "rejected").rglob("*.png"))) == len(views)
    (out / "layout.json").write_text("not json")
    generate(data, out, PromptsConfig(), TINY, overwrite=True)  # the damaged record's files are found ours, and go
    assert not any((out / name).exists() for name in ("train", "rejected", "filter_report", "layout.json"))


def test_a_damaged_layout_record_of_a_training_run_does_not_stop_overwrite(data: Path, tmp_path: Path) -> None:
    from diffcoremix.train import TrainConfig, train
    from diffcoremix.train.run import read_metrics

    run = tmp_path / "run"
    train(data, output=run, config=TrainConfig(model="resnet20", batch_size=4, img_size=32, max_steps=2))
    (run / "layout.json").write_text("{")
    longer = TrainConfig(model="resnet20", batch_size=4, img_size=32, max_steps=3)
    train(data, output=run, config=longer, overwrite=True)  # afresh: the run's files are deleted by their names
    assert [line["step"] for line in read_metrics(run, "step")] == [1, 2, 3]
    assert json.loads((run / "layout.json").read_text())["format"] == 2


def test_a_file_where_a_class_folder_of_train_belongs_is_one_line_and_moving_it_repairs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _augmented(data, tmp_path / "out")
    blocker = out / "train" / "001.cat"
    shutil.rmtree(blocker)
    blocker.write_text("a file of the user's")
    result = run_in_process(capsys, "filter", out, "--embedder", "tiny", "--threshold", "-1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"diffcoremix filter: error: {blocker} is a file where diffcoremix keeps a folder: move it away "
        f"(mv {blocker} ELSEWHERE) and rerun"
    ]
    assert blocker.read_text() == "a file of the user's"
    blocker.rename(tmp_path / "moved")
    assert run_in_process(capsys, "filter", out, "--embedder", "tiny", "--threshold", "-1").returncode == 0
    assert len(list(blocker.glob("*.png"))) == 2


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_a_lost_run_record_names_its_cause_and_the_making_command_repairs_it(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    out = tmp_path / "out"
    assert run_in_process(capsys, "augment", data, "-o", out, *CLI_TINY).returncode == 0
    before = read_manifest(out).drop(columns=["seconds"])
    if damage == "missing":
        (out / "run.json").unlink()
    else:
        (out / "run.json").write_text('{"made_by": "diffc')
    cause = "has no run.json" if damage == "missing" else "has a damaged run.json (Unterminated string"
    refused = run_in_process(capsys, "filter", out, "--embedder", "tiny")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert cause in lines[0]
    assert f"diffcoremix augment DATA -o {out}" in lines[0]
    repaired = run_in_process(capsys, "augment", data, "-o", out, *CLI_TINY)  # the command the line names
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads((out / "run.json").read_text())["made_by"] == "diffcoremix"
    assert read_manifest(out).drop(columns=["seconds"]).equals(before)
    assert run_in_process(capsys, "filter", out, "--embedder", "tiny").returncode == 0
    (out / "run.json").unlink()
    overwrite = run_in_process(capsys, "augment", data, "-o", out, *CLI_TINY, "--overwrite")
    assert overwrite.returncode == 0, overwrite.stderr


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False).returncode == 0


READ_ONLY = r"""
set -u
disk=$1; shift
mount -t tmpfs tmpfs "$disk" || exit 97
mkdir "$disk/out"
mount -o remount,ro "$disk" || exit 98
"$@"
"""


@pytest.mark.skipif(not _unshare_works(), reason="`unshare -rm true` fails here: the test needs a private mount")
def test_a_read_only_output_is_one_line(data: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    for out in (disk / "out", disk / "new"):
        command = cli_command("augment", data, "-o", out, *CLI_TINY)
        env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
               "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # fmt: skip
        result = subprocess.run(["unshare", "-rm", "sh", "-c", READ_ONLY, "sh", disk, *command], env=env,
                                capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"diffcoremix augment: error: cannot write to {out}: read-only file system"
        ]


# --- 10. the cache holds only what the run uses --------------------------------------------------------------------


def test_after_a_settings_change_the_cache_holds_what_a_fresh_run_holds(data: Path, tmp_path: Path) -> None:
    out, fresh = _augmented(data, tmp_path / "out"), tmp_path / "fresh"
    other = PromptsConfig(seed=8)
    (out / "settings.json").unlink()  # the settings change is then found record by record: every image is redone
    (out / "cache" / "0123456789abcdef" / "00").mkdir(parents=True)  # another embedder's entry, and a file of the
    (out / "cache" / "0123456789abcdef" / "00" / f"{'0' * 64}.npy").write_bytes(b"x")  # user's, not of our form
    (out / "cache" / "notes.txt").write_text("mine")
    generate(data, out, other, TINY)
    filter_run(out, KEEP_ALL)
    generate(data, fresh, other, TINY)
    filter_run(fresh, KEEP_ALL)

    def entries(folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in (folder / "cache").rglob("*.npy"))

    assert entries(out) == entries(fresh)
    assert len(entries(fresh)) == 8  # the 4 real images and the 4 generated ones
    assert (out / "cache" / "notes.txt").read_text() == "mine"


def test_a_file_of_the_users_beside_a_named_output_is_never_replaced(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "scan.config.yaml"  # where `scan -o scan.json` writes its resolved config
    mine.write_text("my own settings\n")
    result = run_in_process(capsys, "scan", data, "-o", tmp_path / "scan.json")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"diffcoremix scan: error: {mine} exists and is not a resolved config written by diffcoremix: move it away, "
        "or choose another -o"
    ]
    assert mine.read_text() == "my own settings\n"
    assert not (tmp_path / "scan.json").exists()  # refused before any work
    mine.unlink()
    assert run_in_process(capsys, "scan", data, "-o", tmp_path / "scan.json").returncode == 0
    assert run_in_process(capsys, "scan", data, "-o", tmp_path / "scan.json").returncode == 0  # ours: replaced
