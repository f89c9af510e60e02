"""Bad input everywhere: every command that reads DATA names what it skipped, and the files that links make images
of two classes, in one warning line; refuses a DATA with nothing usable in one error line (exit 2); ``train`` and
``compare`` refuse linked files unless ``--allow-duplicates``; and every (command, bad input) pair is one line, never
a traceback.

The commands run in-process through the real entry point (``main``), a subprocess for one representative case:
the refusals come before any model loads, and the runs that do work use the tiny generator, the tiny embedder and
a resnet20 at 32 px.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffcoremix.cli.main import main

from .helpers import make_class_folders, run_cli

GEN = ("--preset", "tiny", "--num-inference-steps", "1", "--height", "32", "--width", "32")
TRAIN = ("--model", "resnet20", "-b", "8", "--img-size", "32", "--epochs", "1")
WARNING = "diffcoremix: WARNING: "


def _bad_data(root: Path) -> Path:
    """Two usable classes (one with a unicode name and a space), one file or entry of every kind scan reports, and
    files that links make images of two classes: a class folder that is a link to another class's (6 files), a hard
    link and a file link into another class (2 more): 14 images of 6 files, each read under two or three labels."""
    make_class_folders(root, {"001.cat": 6, "Hund 犬": 6}, size=32)
    cat = root / "001.cat"
    os.link(root / "Hund 犬" / "img_001.png", cat / "hard_link.png")
    os.symlink("../Hund 犬/img_002.png", cat / "soft_link.png")
    os.symlink("Hund 犬", root / "zz linked")
    (cat / "empty.png").write_bytes(b"")
    (cat / "not_an_image.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    good = (cat / "img_000.png").read_bytes()
    (cat / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cat / "small.png")  # below scan's min side (32)
    os.symlink("loop.png", cat / "loop.png")  # a file link to itself
    os.symlink(".", cat / "again")  # a directory link back to its class
    os.mkfifo(cat / "fifo.png")  # not a regular file
    # Unreadable: as root, chmod 000 leaves a file readable; /proc/self/mem is a regular file that no one can read
    # from its start (EIO), so it is unreadable whoever runs the tests.
    os.symlink("/proc/self/mem", cat / "unreadable.png")
    if os.geteuid() != 0:
        (cat / "denied.png").write_bytes(good)
        (cat / "denied.png").chmod(0)
    (root / "empty class").mkdir()
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The datasets, files and outputs the cases use (one generate, filter and train run, shared)."""
    root = tmp_path_factory.mktemp("bad")
    w = {
        "bad": _bad_data(root / "dätä set"),
        "good": make_class_folders(root / "good", {"001.cat": 5, "002.dog": 5}, size=32),
        "one": make_class_folders(root / "one", {"a": 8}, size=32),
        "empty": root / "empty",
        "emptyclasses": root / "emptyclasses",
        "allbad": root / "allbad",
        "file": root / "file.txt",
        "text": root / "text.pt",
        "wrong": root / "wrong.pt",
        "nope": root / "nope",
    }
    w["empty"].mkdir()
    for cls in ("a", "b"):
        (w["emptyclasses"] / cls).mkdir(parents=True)
        (w["allbad"] / cls).mkdir(parents=True)
    (w["allbad"] / "a" / "x.png").write_bytes(b"not an image")
    (w["allbad"] / "b" / "y.jpg").write_bytes(b"")
    w["file"].write_text("a file where a folder belongs\n")
    w["text"].write_text("not a checkpoint\n")
    torch.save({"conv.weight": torch.zeros(3)}, w["wrong"])  # a state dict of another shape
    # Outputs that later commands read, made from the bad DATA (their warnings are checked in the tests below).
    w["gen"], w["run"] = root / "gen", root / "run"
    assert main(["-q", "generate", str(w["bad"]), "-o", str(w["gen"]), *GEN, "--fraction", "0.2"]) == 0
    assert main(["-q", "filter", str(w["gen"]), "--embedder", "tiny", "--threshold", "-1"]) == 0
    assert main(["-q", "train", str(w["bad"]), "-o", str(w["run"]), "--allow-duplicates", *TRAIN]) == 0
    return w


_FRESH = itertools.count()


def _args(world: dict[str, Path], template: str) -> list[str]:
    """``{bad} -o {out}/x`` with the world's paths filled in (``out`` is a fresh folder per call)."""
    paths = {k: str(v) for k, v in world.items()} | {"out": str(world["bad"].parent / "outs" / str(next(_FRESH)))}
    return [part.format(**paths) for part in template.split()]


def _one_line(err: str) -> str:
    """The single error line of stderr (warning lines aside), asserting there is exactly one and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(WARNING)]
    assert len(lines) == 1, err
    assert ": error: unexpected " not in lines[0], err
    return lines[0]


# --- 1. bad DATA is named in one summary line by every command that reads it -----------------------------------

LISTING_KINDS = ("empty_class 1", "special 1", "symlink_loop 2", "linked_across_classes 14")
DECODED_KINDS = ("not_an_image 1", "empty_file 1", "truncated 1", "unreadable")  # unreadable: 2 when not root
LINKED_FIRST = (
    "first: 001.cat/hard_link.png: the same file as Hund 犬/img_001.png, zz linked/img_001.png, through a link"
)
SHOWN = (*LISTING_KINDS, *DECODED_KINDS, "too_small 1")  # mix-preview shows the 8x8 image, as training reads it

READS_DATA = {
    "prompts": ("prompts {bad} -o {out}/p.jsonl", (*LISTING_KINDS, *DECODED_KINDS, "too_small 1")),
    # generate's, augment's and finetune's warnings: see test_linked_files_are_named_before_any_model_loads
    "filter": ("filter {gen} --embedder tiny --threshold -1", LISTING_KINDS),  # generate's skips are recorded
    "mix-preview": ("mix-preview {bad} --synthetic {gen} -o {out}/m.png --size 32", SHOWN),
    "report": ("report {gen} -o {out}/r.html", SHOWN),
    "eval": ("eval {run} --data {bad}", (*LISTING_KINDS, *DECODED_KINDS)),
    "train --test": (
        "train {bad} -o {out} --test {bad} --allow-duplicates " + " ".join(TRAIN),
        (*LISTING_KINDS, *DECODED_KINDS),
    ),
    "compare": (
        "compare {bad} --methods none -o {out} --test {bad} --allow-duplicates " + " ".join(TRAIN),
        (*LISTING_KINDS, *DECODED_KINDS),
    ),
}


@pytest.mark.parametrize("name", list(READS_DATA))
def test_bad_data_is_named_in_one_warning_line(
    name: str, world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    template, kinds = READS_DATA[name]
    capsys.readouterr()
    assert main(_args(world, template)) == 0
    err = capsys.readouterr().err
    what = "--test" if "--test" in name else "DATA"
    warnings = [line for line in err.splitlines() if line.startswith(f"{WARNING}{what} {world['bad']}: skipped")]
    assert len(warnings) == 1, err
    (line,) = warnings
    assert line.endswith(f"run `diffcoremix scan {world['bad']}` for the list")
    for kind in kinds:
        assert kind in line, (kind, line)
    skipped, read = line.split("; read ")  # what is left out, then what is read despite a problem
    assert "linked_across_classes" in read
    assert "linked_across_classes" not in skipped
    assert ("too_small" in read) == (kinds is SHOWN)  # prompts leaves it out: skipped
    assert LINKED_FIRST in read
    assert "Traceback" not in err


LINKED_BEFORE_MODELS = {
    "generate": "generate {bad} -o {out} --preset tiny --model {nope}",
    "augment": "augment {bad} -o {out} --preset tiny --embedder hf:{nope}",
    "finetune": "finetune {bad} -o {out} --preset tiny --model {nope}",
}


@pytest.mark.parametrize("name", list(LINKED_BEFORE_MODELS))
def test_linked_files_are_named_before_any_model_loads(
    name: str, world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands that load a model check DATA first: their warning line comes even when the model then fails."""
    capsys.readouterr()
    assert main(_args(world, LINKED_BEFORE_MODELS[name])) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith(WARNING)]
    assert line.startswith(f"{WARNING}DATA {world['bad']}: skipped "), line
    assert "; read 14 image(s) despite a problem (linked_across_classes 14; " + LINKED_FIRST in line
    _one_line(err)


LINKED_REFUSED = {
    "train": "train {bad} -o {out} " + " ".join(TRAIN),
    "train --val": "train {good} -o {out} --val {bad} " + " ".join(TRAIN),
    "train --test": "train {good} -o {out} --test {bad} " + " ".join(TRAIN),
    "compare --max-steps": "compare {bad} --methods none -o {out} --test {good} --max-steps 1 " + " ".join(TRAIN),
    "compare --val": "compare {good} --methods none -o {out} --val {bad} " + " ".join(TRAIN),
}


@pytest.mark.parametrize("name", list(LINKED_REFUSED))
def test_train_and_compare_refuse_linked_files_unless_allowed(
    name: str, world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before anything is written: one line (no warning either) naming the classes, a path, and the way out."""
    args = _args(world, LINKED_REFUSED[name])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    what = name.split()[-1] if name.split()[-1] in ("--val", "--test") else "DATA"
    assert line.startswith(
        f"diffcoremix {name.split()[0]}: error: {what} {world['bad']}: 6 file(s) are images of "
        "two classes through links (first: 001.cat/hard_link.png and Hund 犬/img_001.png and zz "
        "linked/img_001.png are one file, in classes '001.cat' and 'Hund 犬' and 'zz linked')"
    ), line
    assert line.endswith("remove the links, or pass --allow-duplicates to read them as they are"), line
    assert not Path(args[args.index("-o") + 1]).exists()  # nothing written


def test_generate_and_train_named_the_bad_files_and_used_the_rest(world: dict[str, Path]) -> None:
    """The fixture's runs: generation planned only from usable sources (too_small left out), training read every
    image that decodes; both in a real subprocess for the one-line check of the whole stderr."""
    import json

    skipped = {s["kind"] for s in json.loads((world["gen"] / "run.json").read_text())["skipped_sources"]}
    assert {"not_an_image", "empty_file", "truncated", "too_small", "unreadable"} <= skipped
    result = run_cli("prompts", world["bad"], "-o", world["bad"].parent / "p.jsonl")
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{WARNING}DATA {world['bad']}: skipped ")
    assert "first: 001.cat/fifo.png: not a regular file or directory" in line
    assert "'empty class'" not in line  # an empty class folder is counted once, as empty_class
    assert "for 20 source images" in result.stdout  # 6 + 2 links, 6, and 6 through the linked class folder


def test_allow_duplicates_decides_whether_a_run_starts_not_its_settings(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The fixture's run, made with --allow-duplicates, is the run its settings name: a rerun without the option is
    refused for the links, not for other settings, and a clean DATA's run resumes with or without it."""
    capsys.readouterr()
    assert main(["train", str(world["bad"]), "-o", str(world["run"]), *TRAIN]) == 2
    assert "--allow-duplicates" in _one_line(capsys.readouterr().err)
    out = world["bad"].parent / "clean run"
    assert main(["-q", "train", str(world["good"]), "-o", str(out), *TRAIN]) == 0
    assert main(["-q", "train", str(world["good"]), "-o", str(out), "--allow-duplicates", *TRAIN]) == 0
    assert "other settings" not in capsys.readouterr().err


NOTHING_USABLE = {
    "prompts": "prompts {allbad} -o {out}/p.jsonl",
    "generate": "generate {allbad} -o {out} " + " ".join(GEN),
    "augment": "augment {allbad} -o {out} --embedder tiny " + " ".join(GEN),
    "train": "train {allbad} -o {out} " + " ".join(TRAIN),
    "train --val": "train {good} -o {out} --val {emptyclasses} " + " ".join(TRAIN),
    "compare --test": "compare {good} --methods none -o {out} --test {allbad} " + " ".join(TRAIN),
    "finetune": "finetune {allbad} -o {out} --preset tiny",
    "eval": "eval {run} --data {emptyclasses}",
    "mix-preview": "mix-preview {allbad} --synthetic {gen} -o {out}/m.png",
    "filter --data": "filter {gen} --data {allbad}",
}


@pytest.mark.parametrize("name", list(NOTHING_USABLE))
def test_nothing_usable_is_refused_in_one_line(
    name: str, world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(_args(world, NOTHING_USABLE[name])) == 2
    line = _one_line(capsys.readouterr().err)
    assert "has no usable image" in line, line
    assert "run `diffcoremix scan" in line


# --- 2. every (command, bad input) pair: one line, exit 2 ---------------------------------------------------------

BAD_INPUT = [
    # missing path, a file where a folder belongs, an empty dataset
    ("scan {nope}", "does not exist"),
    ("prompts {nope} -o {out}/p.jsonl", "does not exist"),
    ("prompts {file} -o {out}/p.jsonl", "is not a directory"),
    ("prompts {empty} -o {out}/p.jsonl", "has no class sub-folders"),
    ("generate {file} -o {out} --preset tiny", "is not a directory"),
    ("generate {good} -o {file} --preset tiny", "is a file, not a folder"),
    ("filter {nope}", "is not a diffcoremix output"),
    ("filter {file}", "is a file, not a folder"),
    ("augment {empty} -o {out} --preset tiny", "has no class sub-folders"),
    ("mix-preview {file} --synthetic {gen} -o {out}/m.png", "is not a directory"),
    ("mix-preview {good} --synthetic {nope} -o {out}/m.png", "--synthetic {nope} does not exist"),
    ("mix-preview {good} --synthetic {file} -o {out}/m.png", "--synthetic {file} is not a folder"),
    ("mix-preview {good} --synthetic {good} -o {out}/m.png", "--synthetic {good} is not a generation run"),
    ("train {good} -o {out} --method synthetic-add --synthetic {nope}", "--synthetic {nope} does not exist"),
    ("train {nope} -o {out}", "is not an existing path nor a torchvision dataset name"),
    ("train {file} -o {out}", "not a folder"),
    ("train {empty} -o {out}", "has no class sub-folders"),
    ("train {good} -o {out} --val {file}", "is not a directory"),
    ("compare {nope} --methods none -o {out} --val-split 0.5", "is not an existing path"),
    ("eval {nope} --data {good}", "is not a finished training run"),
    ("eval {file} --data {good}", "is not a finished training run"),
    ("eval {run} --data {nope}", "is not an existing path"),
    ("judge {nope} --classifier tiny", "does not exist"),
    ("judge {good} --classifier tiny", "is not a diffcoremix output"),
    ("finetune {nope} -o {out} --preset tiny", "is not an existing path"),
    ("finetune {file} -o {out} --preset tiny", "is not a directory"),
    ("report {nope}", "is not a folder"),
    ("report {file}", "is not a folder"),
    ("report {good}", "was not made by"),
    # one class only where a classifier needs two
    ("train {one} -o {out} " + " ".join(TRAIN), "usable images in 1 class(es) ('a')"),
    ("compare {one} --methods none -o {out} --test {good} " + " ".join(TRAIN), "training a classifier needs at"),
    # models that cannot load (offline), wrong checkpoint files, unknown names
    ("generate {good} -o {out} --preset nope", "--preset must be one of"),
    ("generate {good} -o {out} --preset tiny --model {nope}", "does not exist (a local model folder"),
    ("generate {good} -o {out} --preset sd15 --vae {nope}", "does not exist (a local model folder"),
    ("generate {good} -o {out} --preset tiny --vae {file}", "--vae must be null with the built-in model"),
    ("generate {good} -o {out} --preset tiny --lora {text}", "cannot load LoRA weights"),
    ("generate {good} -o {out} --preset tiny --scheduler NoSuchScheduler", "unknown diffusers scheduler"),
    ("finetune {good} -o {out} --preset tiny --model {nope}", "does not exist (a local model folder"),
    ("finetune {good} -o {out} --preset nope", "--preset must be one of"),
    ("augment {good} -o {out} --preset tiny --embedder nope", "unknown embedder 'nope'"),
    ("augment {good} -o {out} --preset tiny --embedder resnet20:{text}", "cannot read checkpoint"),
    ("augment {good} -o {out} --preset tiny --embedder resnet20:{wrong}", "is not a CIFAR ResNet checkpoint"),
    ("augment {good} -o {out} --preset tiny --embedder hf:{nope}", "cannot load transformers CLIP"),
    ("train {good} -o {out} --model no_such_net", "unknown model 'no_such_net'"),
    ("train {good} -o {out} --model resnet20 -b 8 --init {text}", "cannot read checkpoint"),
    ("train {good} -o {out} --model resnet20 -b 8 --init {wrong}", "does not fit the model"),
    ("train {good} -o {out} --model resnet20 -b 8 --init {nope}", "does not exist"),
    ("compare {good} --methods none,nomix -o {out} --val-split 0.5", "unknown method 'nomix'"),
    ("judge {gen} --classifier nope", "unknown"),
    ("judge {gen} --classifier resnet20:{text}", "cannot read checkpoint"),
    ("prompts {good} -o {out}/p.jsonl --pack nope", "unknown prompt pack"),
    ("prompts {good} -o {out}/p.jsonl --class-map {text}", "expected 2 columns"),
    ("prompts {good} -o {out}/p.jsonl --config {text}", "--config must be a YAML mapping"),
    ("prompts {good} -o {out}/p.jsonl --classes zzz", "unknown class 'zzz'"),
    # values no validator may let through
    ("train {good} -o {out} --lr inf", "--lr must be a finite number, got inf"),
    ("train {good} -o {out} --lr nan", "--lr must be a finite number, got nan"),
    ("augment {good} -o {out} --preset tiny --threshold nan", "--threshold must be a finite number"),
]


@pytest.mark.parametrize(("template", "words"), BAD_INPUT, ids=[t for t, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(
    template: str, words: str, world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    status = main(_args(world, template))
    line = _one_line(capsys.readouterr().err)
    assert status == 2, line
    assert line.startswith(f"diffcoremix {template.split()[0]}: error: "), line
    assert words.format(**world) in line, line


def test_unicode_and_spaces_in_names_work(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """DATA's folder (``dätä set``) and a class (``Hund 犬``) with non-ASCII letters and spaces are read as any other:
    the fixture generated, filtered and trained on them; the prompts name the class in its own words."""
    out = world["bad"].parent / "unicode prompts.jsonl"
    assert main(["-q", "prompts", str(world["bad"]), "-o", str(out)]) == 0
    assert "Hund 犬" in out.read_text(encoding="utf-8")
    assert (world["run"] / "model.pt").is_file()
    assert any((world["gen"] / "train" / "Hund 犬").iterdir())
