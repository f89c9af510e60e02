"""A full disk stops a run with one line and exit 1, naming where it ran out; a rerun with room resumes it to the
uninterrupted result.

The disk is real: a tmpfs of a few KiB mounted over OUT's parent in a private mount namespace (``unshare -rm``,
gone with the process), so the writes fail with ENOSPC exactly where the tool writes. One shell script in that
namespace runs ``augment`` on too small a disk, grows the disk (``mount -o remount,size=...``) and runs it again;
it copies OUT out of the tmpfs after each run for the checks.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from diffcoremix.atomic import TMP_SUFFIX
from diffcoremix.cli.main import main
from diffcoremix.generate import read_manifest
from diffcoremix.manifest import read_decisions

from .helpers import cli_command, make_class_folders, numeric_env


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(
    not _unshare_works(),
    reason="`unshare -rm true` fails here (no unshare, or user and mount namespaces not permitted): the test "
    "needs a private tmpfs to fill",
)

AUGMENT = ("--preset", "tiny", "--num-inference-steps", "1", "--embedder", "tiny", "--threshold", "-1",
           "--seed", "0", "--height", "32", "--width", "32")  # fmt: skip

SCRIPT = r"""
set -u
disk=$1; results=$2; shift 2
mount -t tmpfs -o size=${SIZES%% *} tmpfs "$disk" || exit 97
i=0
for size in $SIZES 64m; do
    mount -o remount,size=$size "$disk" || exit 98
    "$@" >"$results/out$i" 2>"$results/err$i"
    echo $? >"$results/rc$i"
    cp -a "$disk/out" "$results/copy$i"
    i=$((i + 1))
done
"""
"""Run the command once per size of $SIZES (each too small) and once more with room; OUT is ``$disk/out``."""


def _contents(folder: Path) -> dict[str, str]:
    """Content hashes of the files that must be byte-equal (as in test_augment: the manifest holds wall times and
    is compared as a table; the cache holds what was embedded, which a resumed run may embed again)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".diffcoremix")
        and not p.relative_to(folder).as_posix().startswith(("cache/", "manifest/"))
    }  # fmt: skip


def _stable(out: Path) -> pd.DataFrame:
    return read_manifest(out).drop(columns=["seconds"])


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param("28k", id="full-while-generating"),
        pytest.param("28k 80k", id="full-while-generating-then-while-filtering", marks=pytest.mark.slow),
    ],
)
def test_a_full_disk_is_one_line_and_a_rerun_with_room_resumes_to_the_uninterrupted_result(
    tmp_path: Path, sizes: str
) -> None:
    data = make_class_folders(tmp_path / "data", {"cat": 2, "dog": 2}, size=32)
    disk, results, ref = tmp_path / "disk", tmp_path / "results", tmp_path / "ref"
    disk.mkdir()
    results.mkdir()
    # the uninterrupted run below is in this process: the namespace run keeps its numeric libraries' settings
    env = {**numeric_env(), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "SIZES": sizes}
    command = cli_command("augment", data, "-o", disk / "out", *AUGMENT)
    script = subprocess.Popen(["unshare", "-rm", "sh", "-c", SCRIPT, "sh", disk, results, *command], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:  # the uninterrupted run in this process meanwhile: the machine's two cores are used at once
        assert main(["-q", "augment", str(data), "-o", str(ref), *AUGMENT]) == 0
    finally:
        output, _ = script.communicate(timeout=300)
    assert script.returncode == 0, f"the namespace script failed ({script.returncode}): {output}"

    for i in range(len(sizes.split())):
        err = (results / f"err{i}").read_text()
        assert (results / f"rc{i}").read_text().strip() == "1", err
        lines = err.splitlines()
        assert len(lines) == 1, err
        prefix = f"diffcoremix augment: error: no space left on device at {disk / 'out'}/"
        assert lines[0].startswith(prefix), err
        assert lines[0].endswith(
            f" (free space or write {disk / 'out'} to a larger disk; a rerun resumes where this run stopped)"
        ), err
        assert not list((results / f"copy{i}").rglob(f"*{TMP_SUFFIX}")), "a failed write left its temporary file"
    assert "images/" in (results / "err0").read_text(), "the first disk was meant to fill while generating"

    last = len(sizes.split())
    assert (results / f"rc{last}").read_text().strip() == "0", (results / f"err{last}").read_text()
    final = results / f"copy{last}"
    assert not list(final.rglob(f"*{TMP_SUFFIX}"))
    pd.testing.assert_frame_equal(_stable(final), _stable(ref))
    assert read_decisions(final) == read_decisions(ref)
    assert _contents(final) == _contents(ref)
