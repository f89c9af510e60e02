"""The output folder has one owner and loses nothing: overlap with DATA, foreign folders, the lock, --overwrite,
runs that fail before their first image, per-record resume checks, one-to-one view names, class folders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffcoremix import DataConfig, PromptsConfig
from diffcoremix.filter import FilterConfig, filter_run
from diffcoremix.generate import GenerateConfig, generate
from diffcoremix.manifest import FolderBusyError, FolderLock, OutputFolderError, read_manifest, view_name

from .helpers import make_class_folders, run_cli

FAST = ("--preset", "tiny", "--num-inference-steps", "1")
TINY = GenerateConfig(preset="tiny", num_inference_steps=1)


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder``: content hash and modification time."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_error_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"diffcoremix {command}: error: ")
    return lines[0]


# --- DATA and OUT never overlap ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["augment", "generate"])
def test_an_output_that_contains_the_dataset_is_refused_and_the_photos_survive(tmp_path: Path, command: str) -> None:
    # The review's case: `augment DATA/train -o DATA` rebuilt OUT/train and deleted the real training set.
    data = make_class_folders(tmp_path / "dataset" / "train", {"001.cat": 2, "002.dog": 2})
    before = _tree(tmp_path / "dataset")
    line = _one_error_line(run_cli(command, data, "-o", tmp_path / "dataset", *FAST, "--embedder", "tiny")
                           if command == "augment" else run_cli(command, data, "-o", tmp_path / "dataset", *FAST),
                           command)  # fmt: skip
    assert "contains the dataset" in line
    assert _tree(tmp_path / "dataset") == before


def test_overlap_is_judged_on_resolved_paths(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "real" / "train", {"001.cat": 2})
    (tmp_path / "alias").symlink_to(tmp_path / "real")  # OUT names DATA's parent through a link
    before = _tree(tmp_path / "real")
    line = _one_error_line(run_cli("generate", data, "-o", tmp_path / "alias", *FAST), "generate")
    assert "contains the dataset" in line
    inside = _one_error_line(run_cli("generate", tmp_path / "alias" / "train", "-o", data / "gen", *FAST), "generate")
    assert "never writes into DATA" in inside
    assert _tree(tmp_path / "real") == before


def test_filter_refuses_a_dataset_inside_its_output(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    before = _tree(out)
    line = _one_error_line(run_cli("filter", out, "--data", out / "images", "--embedder", "tiny"), "filter")
    assert "contains the dataset" in line
    cache = _one_error_line(run_cli("filter", out, "--embedder", "tiny", "--cache-dir", data / "cache"), "filter")
    assert "never writes into DATA" in cache
    assert _tree(out) == before
    assert not (data / "cache").exists()


@pytest.mark.parametrize("command", ["prompts", "scan", "mix-preview"])
def test_report_files_are_never_written_into_the_dataset(tmp_path: Path, command: str) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    before = _tree(data)
    target = data / "001.cat" / "report.out"
    extra = ("--synthetic", tmp_path / "nowhere") if command == "mix-preview" else ()
    line = _one_error_line(run_cli(command, data, "-o", target, *extra), command)
    assert "never writes into DATA" in line
    assert _tree(data) == before


# --- a folder we did not make is never touched ------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_non_empty_output_is_refused_even_with_overwrite(tmp_path: Path, overwrite: bool) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    out = tmp_path / "mine"
    (out / "train").mkdir(parents=True)
    (out / "train" / "thesis.tex").write_text("years of work")
    (out / "notes.txt").write_text("keep me")
    before = _tree(out)
    flags = ("--overwrite",) if overwrite else ()
    line = _one_error_line(run_cli("augment", data, "-o", out, *FAST, "--embedder", "tiny", *flags), "augment")
    assert "not empty and was not made by diffcoremix" in line
    assert _tree(out) == before
    line = _one_error_line(run_cli("filter", out, "--embedder", "tiny"), "filter")
    assert "is not a diffcoremix output" in line
    assert _tree(out) == before


def test_overwrite_deletes_only_what_our_records_name(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 2})
    out = tmp_path / "out"
    assert run_cli("augment", data, "-o", out, *FAST, "--embedder", "tiny", "--threshold", "-1").returncode == 0
    (out / "README.txt").write_text("my notes about this run")
    (out / "images" / "001.cat" / "favourite.png").write_bytes((out / "train" / "001.cat").iterdir().__next__()
                                                                .read_bytes())  # fmt: skip
    old = read_manifest(out)
    # Other settings are refused without --overwrite, and start afresh with it.
    refused = run_cli("augment", data, "-o", out, *FAST, "--embedder", "tiny", "--threshold", "-1", "--seed", "1")
    assert "holds a run made with other settings" in _one_error_line(refused, "augment")
    fresh = run_cli("augment", data, "-o", out, *FAST, "--embedder", "tiny", "--threshold", "-1", "--seed", "1",
                    "--overwrite")  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    new = read_manifest(out)
    assert set(new.seed).isdisjoint(set(old.seed))
    assert (out / "README.txt").read_text() == "my notes about this run"
    assert (out / "images" / "001.cat" / "favourite.png").is_file()
    assert len(list((out / "train").rglob("*.png"))) == 4


# --- a run that fails before its first image leaves OUT as it found it -----------------------------------------------


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_start_does_not_claim_the_output_and_the_corrected_command_works(
    tmp_path: Path, existing: bool
) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    line = _one_error_line(run_cli("generate", data, "-o", out, "--model", "no/such/model.safetensors"), "generate")
    assert "does not exist" in line
    assert out.exists() == existing
    if existing:
        assert list(out.iterdir()) == []
    fixed = run_cli("generate", data, "-o", out, *FAST)
    assert fixed.returncode == 0, fixed.stderr
    assert "2 generated" in fixed.stdout


# --- one run at a time --------------------------------------------------------------------------------------------


def test_a_second_run_on_a_busy_output_is_refused_naming_the_holder(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    before = _tree(out)
    with FolderLock(out):
        for args in (("generate", data, "-o", out, *FAST), ("filter", out, "--embedder", "tiny"),
                     ("augment", data, "-o", out, *FAST, "--embedder", "tiny")):  # fmt: skip
            line = _one_error_line(run_cli(*args), str(args[0]))
            assert f"is in use by another diffcoremix run (pid {os.getpid()})" in line
        with pytest.raises(FolderBusyError):
            filter_run(out, FilterConfig(embedder="tiny"))
    assert {k: v for k, v in _tree(out).items() if not k.startswith(".diffcoremix")} == before
    assert run_cli("filter", out, "--embedder", "tiny").returncode == 0


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    code = (
        "import time; from pathlib import Path; from diffcoremix.manifest import FolderLock; "
        f"FolderLock(Path({str(out)!r})).acquire(); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        busy = run_cli("filter", out, "--embedder", "tiny")
        assert f"pid {holder.pid}" in _one_error_line(busy, "filter")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert run_cli("filter", out, "--embedder", "tiny").returncode == 0  # the kernel released the lock
    finally:
        holder.kill()
        holder.wait()


def test_shards_of_one_run_work_side_by_side_but_a_shard_runs_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, shard=(0, 2)):
        with FolderLock(out, shard=(1, 2)):
            pass  # another shard of the same run
        with pytest.raises(FolderBusyError):
            FolderLock(out, shard=(0, 2)).acquire()
        with pytest.raises(FolderBusyError):
            FolderLock(out).acquire()  # whole-folder work waits for every shard
    assert not list(out.iterdir())  # lock files are removed by their last holder


# --- resume reuses only what this run would make ---------------------------------------------------------------------


def test_without_settings_json_other_settings_regenerate_every_image(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 1})
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    first = read_manifest(out)
    (out / "settings.json").unlink()
    summary = generate(data, out, PromptsConfig(), GenerateConfig(preset="tiny", num_inference_steps=1,
                                                                  guidance_scale=9.0))  # fmt: skip
    assert (summary.generated, summary.skipped) == (3, 0)
    second = read_manifest(out)
    assert set(second.guidance_scale) == {9.0}
    assert second.key.tolist() == first.key.tolist()
    assert set(second.output_sha256).isdisjoint(set(first.output_sha256))
    # Another base seed with the same prompts (one template, one context): only the records' seeds differ.
    pack = tmp_path / "one.yaml"
    pack.write_text("name: one\ndescription: one prompt\ndomain: thing\ntemplates: ['a photo of a {name}']\n"
                    "contexts: [here]\nnegative: [blurry]\n")  # fmt: skip
    nine = GenerateConfig(preset="tiny", num_inference_steps=1, guidance_scale=9.0)
    generate(data, out, PromptsConfig(pack=str(pack)), nine, overwrite=True)
    before = read_manifest(out)
    (out / "settings.json").unlink()
    changed = generate(data, out, PromptsConfig(pack=str(pack), seed=4), nine)
    after = read_manifest(out)
    assert after.prompt.tolist() == before.prompt.tolist()
    assert set(after.seed).isdisjoint(set(before.seed))
    assert (changed.generated, changed.skipped) == (3, 0)


# --- the views: one-to-one names, nothing written through a link, every class, metadata ----------------------------


def test_view_names_are_one_to_one() -> None:
    names = [view_name(p) for p in ("images/c/x__y.png.k0.png", "images/c/x/y.png.k0.png", "images/c/x%2Fy.png.k0.png",
                                    "images/c/x%y.png.k0.png", "images/c/plain.png.k0.png")]  # fmt: skip
    assert len(set(names)) == 5
    assert names[-1] == "plain.png.k0.png"


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), (value, 255 - value, value // 2)).save(path)


def test_colliding_nested_names_both_reach_train_and_images_stay_intact(tmp_path: Path) -> None:
    # cat/x__y.png and cat/x/y.png were both named x__y.png.k0.png: the second copy2 wrote through the first link.
    data = tmp_path / "data"
    _png(data / "cat" / "x__y.png", 10)
    _png(data / "cat" / "x" / "y.png", 200)
    _png(data / "dog" / "d.png", 90)
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    images = _tree(out / "images")
    filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0))
    assert {k: v[0] for k, v in _tree(out / "images").items()} == {k: v[0] for k, v in images.items()}
    train = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "train" / "cat").iterdir()}
    assert sorted(train) == ["x%2Fy.png.k0.png", "x__y.png.k0.png"]
    assert sorted(train.values()) == sorted(v[0] for k, v in images.items() if k.startswith("cat/"))


def test_a_foreign_file_in_the_way_is_an_error_and_other_foreign_files_are_kept(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    images = _tree(out / "images")
    mine = out / "train" / "001.cat" / "img_000.png.k0.png"
    _png(mine, 7)
    (out / "train" / "extra.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="was not made by diffcoremix"):
        filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0))
    assert _tree(out / "images") == images
    mine.unlink()
    filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0))
    filter_run(out, FilterConfig(embedder="tiny", threshold=1.0))  # everything moves to rejected/
    assert (out / "train" / "extra.txt").read_text() == "mine"
    assert len(list((out / "rejected").rglob("*.png"))) == 2
    assert not list((out / "train").rglob("*.png"))
    assert _tree(out / "images") == images


def test_every_class_keeps_its_index_when_one_has_no_accepted_image(tmp_path: Path) -> None:
    import datasets
    from torchvision.datasets import ImageFolder

    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 2, "003.eel": 2})
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), TINY)
    table = read_manifest(out)
    # Decide two classes only (keeping all): the middle class has no accepted image.
    subset = DataConfig(classes=("001.cat", "003.eel"))
    report = filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0), data_config=subset)
    assert {c: r.accepted for c, r in report.classes.items()} == {"001.cat": 2, "003.eel": 2}
    folder = ImageFolder(str(out / "train"), allow_empty=True)
    assert folder.classes == ["001.cat", "002.dog", "003.eel"]
    assert sorted(set(folder.targets)) == [0, 2]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out / "train"), split="train",
                                   cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert sorted(loaded["label"]) == [0, 0, 2, 2]
    metadata = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    by_key = table.set_index("key")
    for row in metadata:
        assert row["label"] == by_key.loc[row["key"], "label"]
        assert row["prompt"] == by_key.loc[row["key"], "prompt"]
        assert row["source"] == by_key.loc[row["key"], "source"]
        assert (out / "train" / row["file_name"]).is_file()
        assert isinstance(row["score"], float)
    assert (out / "rejected" / "002.dog").is_dir()


# --- sources are checked before any model loads; subsets ---------------------------------------------------------


def test_broken_sources_are_skipped_with_a_reason_before_generation(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 3, "002.dog": 2})
    (data / "001.cat" / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good = (data / "002.dog" / "img_000.png").read_bytes()
    (data / "002.dog" / "img_001.png").write_bytes(good[: len(good) // 2])  # truncated
    out = tmp_path / "out"
    result = run_cli("augment", data, "-o", out, *FAST, "--embedder", "tiny", "--threshold", "-1")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "skipped 2 image(s)" in line]
    assert len(warnings) == 1, result.stderr
    assert "3 accepted of a budget of 3" in result.stdout
    table = read_manifest(out)
    assert sorted(table.source) == ["001.cat/img_000.png", "001.cat/img_002.png", "002.dog/img_000.png"]
    skipped = {s["relpath"]: s["kind"] for s in json.loads((out / "run.json").read_text())["skipped_sources"]}
    assert set(skipped) == {"001.cat/img_001.png", "002.dog/img_001.png"}
    assert skipped["002.dog/img_001.png"] in {"truncated", "corrupt"}


@pytest.mark.slow  # heavy: several generations and filters: make test-all
def test_class_and_size_subsets_keep_the_datasets_labels(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"a": 3, "b": 3, "c": 3})
    out = tmp_path / "out"
    result = run_cli("generate", data, "-o", out, *FAST, "--classes", "a,c", "--max-per-class", "2")
    assert result.returncode == 0, result.stderr
    table = read_manifest(out)
    assert table.source.tolist() == ["a/img_000.png", "a/img_001.png", "c/img_000.png", "c/img_001.png"]
    assert table.label.tolist() == [0, 0, 2, 2]
    scan = run_cli("scan", data, "--classes", "b", "--json")
    assert json.loads(scan.stdout)["num_images"] == 3
    unknown = run_cli("scan", data, "--classes", "a,zebra")
    assert "unknown class 'zebra'; known: a, b, c" in _one_error_line(unknown, "scan")
    shutil.rmtree(out)


def test_embedders_follow_a_built_in_generator_and_the_report_says_so(tmp_path: Path) -> None:
    # No --embedder, no --context-embedder: with the offline tiny generator both default to the offline tiny CLIP.
    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 1})
    out = tmp_path / "out"
    result = run_cli("augment", data, "-o", out, *FAST, "--context", "sample", "--threshold", "-1")
    assert result.returncode == 0, result.stderr
    assert "(--embedder tiny: the default for images of the built-in generator builtin:tiny-sd)" in result.stdout
    table = read_manifest(out)
    assert set(table.embedder) == {"tiny-open-clip-seed0"}
    assert table.context_score.notna().all()
    assert json.loads((out / "settings.json").read_text())["prompts"]["context_embedder"] == "tiny"
    assert json.loads((out / "filter_report.json").read_text())["embedder_note"].startswith("--embedder tiny")
    grid = tmp_path / "grid.png"
    preview = run_cli("mix-preview", data, "--synthetic", out, "-o", grid, "--classes", "002.dog", "--size", "16")
    assert preview.returncode == 0, preview.stderr
    assert grid.is_file()
