"""The command line: entry points, one-line errors with exit code 2, --debug, logging levels, packs, sample-data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffcoremix import __version__, list_packs
from diffcoremix.cli.main import main
from diffcoremix.data.sample import MARKER

from .helpers import cli_command, make_class_folders, run_cli


def test_python_m_and_console_script_report_the_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"diffcoremix {__version__}"
    script = Path(sys.executable).with_name("diffcoremix")
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"diffcoremix {__version__}"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "diffcoremix: error: argument COMMAND: invalid choice: 'frobnicate'"),
        (["scan"], "diffcoremix scan: error: the following arguments are required: data"),
        (["scan", "x", "--min-side", "-4"], "diffcoremix scan: error: --min-side must be >= 1, got -4"),
        (
            ["scan", "x", "--min-side", "big"],
            "diffcoremix scan: error: argument --min-side: invalid int value",
        ),
        (["scan", "x", "--workers", "-1"], "diffcoremix scan: error: --workers must be >= 0, got -1"),
        (
            ["scan", "/no/such/folder"],
            "diffcoremix scan: error: dataset folder /no/such/folder does not exist",
        ),
        (
            ["packs", "nope"],
            "diffcoremix packs: error: unknown prompt pack (or pack file path) 'nope'; known:",
        ),
        (
            ["scan", "x", "--config", "nope"],
            "diffcoremix scan: error: --config must be an existing YAML file",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message)
    assert "Traceback" not in result.stderr


def test_unknown_key_in_config_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("prompts:\n  per_imag: 2\n")
    make_class_folders(tmp_path / "data", {"a": 1})
    result = run_cli("prompts", tmp_path / "data", "--config", config, "-o", tmp_path / "p.jsonl")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("diffcoremix prompts: error: unknown prompts option 'per_imag'; known:")


def test_debug_shows_the_traceback() -> None:
    for position in (["--debug", "scan", "/no/such/folder"], ["scan", "/no/such/folder", "--debug"]):
        result = run_cli(*position)
        assert result.returncode == 2
        assert "Traceback (most recent call last)" in result.stderr
        assert "DatasetError" in result.stderr


@pytest.mark.slow  # heavy: several real generations; test_offline checks the log routing too: make test-all
def test_verbosity_controls_log_output(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2})
    quiet = run_cli("-q", "scan", data, "--min-side", "64")  # every 40 px image is a problem: a warning
    normal = run_cli("scan", data, "--min-side", "64")
    debug = run_cli("scan", data, "-vv")
    assert "WARNING" not in quiet.stderr
    assert "diffcoremix: WARNING: 4 problem(s) found" in normal.stderr
    assert "DEBUG" in debug.stderr
    assert quiet.returncode == normal.returncode == 0


def test_packs_lists_every_pack_and_shows_one() -> None:
    listed = run_cli("packs")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list_packs()
    shown = run_cli("packs", "paper")
    assert shown.returncode == 0
    assert "  - soaring through a stormy sky with dark clouds." in shown.stdout
    assert "  - traffic lights" in shown.stdout


def test_sample_data_is_deterministic_and_never_overwrites_user_data(tmp_path: Path) -> None:
    assert main(["sample-data", str(tmp_path / "a"), "--per-class", "2"]) == 0
    assert main(["sample-data", str(tmp_path / "b"), "--per-class", "2"]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 6
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / MARKER).is_file()
    # A rerun replaces its own output with --overwrite (and nothing it did not write), and refuses without it.
    (tmp_path / "a" / "notes.txt").write_text("mine")
    photo = tmp_path / "a" / "001.circle" / "circle_0001.png"  # the user's own photo under one of its names
    Image.new("RGB", (8, 8), "red").save(photo)
    mine = photo.read_bytes()
    assert main(["sample-data", str(tmp_path / "a"), "--per-class", "3", "--overwrite"]) == 0
    assert len(list((tmp_path / "a").rglob("*.png"))) == 9
    assert (tmp_path / "a" / "notes.txt").read_text() == "mine"
    assert photo.read_bytes() == mine
    assert main(["sample-data", str(tmp_path / "a"), "--per-class", "1", "--overwrite"]) == 0
    assert len(list((tmp_path / "a").rglob("*.png"))) == 4  # and the user's photo
    assert main(["sample-data", str(tmp_path / "a")]) == 2
    # A folder that is not a sample dataset is never replaced, even with --overwrite.
    user = make_class_folders(tmp_path / "user", {"x": 1})
    assert main(["sample-data", str(user), "--overwrite"]) == 2
    assert (user / "x" / "img_000.png").is_file()


def test_sample_data_scans_clean(tmp_path: Path) -> None:
    from diffcoremix import scan_dataset

    assert main(["sample-data", str(tmp_path / "s")]) == 0
    report = scan_dataset(tmp_path / "s")
    assert (len(report.classes), report.num_images, len(report.problems)) == (3, 24, 0)
    assert [c.name for c in report.classes] == ["circle", "square", "triangle"]


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`diffcoremix scan DATA | head`: stdout's reader is gone; the command stops with SIGPIPE's status, no error."""
    data = make_class_folders(tmp_path / "data", {"cat": 1, "dog": 1})
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before the first write
    try:
        result = subprocess.run(cli_command("scan", data), stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=120, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""
