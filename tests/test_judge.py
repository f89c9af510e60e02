"""`judge`: the real CIFAR-10 ResNet-56 labels real CIFAR-10 photos (as generated images of a hand-made manifest)
far above chance, exactly as a plain argmax computed here, and a photo recorded under a wrong class disagrees;
classes meet by normalised name (a train RUN's ``NNN.`` folders, OUT's unknown classes counted as not judged);
a rerun judges only what changed; the filter's own embedder is refused; zero-shot with `tiny` on a real tiny
generation; the judge's file survives a re-filtering and goes with --overwrite; bad input is one line, exit 2."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from diffcoremix.cli.main import main
from diffcoremix.data import list_images, open_image
from diffcoremix.data.classnames import prompt_name
from diffcoremix.embedders import load_embedder
from diffcoremix.embedders.resnet20 import CIFAR10_CLASSES, ResNet20, load_cifar_resnet, load_resnet20
from diffcoremix.errors import ModelLoadError
from diffcoremix.filter import FilterConfig, filter_run
from diffcoremix.judge import JudgeError, judge, load_classifier, map_classes
from diffcoremix.judge.runner import SAVE_EVERY
from diffcoremix.manifest import ManifestWriter, OutputFolder, clear, read_manifest, shard_path
from diffcoremix.manifest.records import JUDGE_COLUMNS

from .helpers import cli_command, make_class_folders, save_tiny_hf_clip, shared_data_dir

pytestmark = pytest.mark.shared_data

PER_CLASS = 5
"""Real CIFAR-10 test photos per class in the hand-made OUT (ResNet-56 labels 41 of these 50 right)."""
WRONG = ("ship", 5, "cat")
"""A photo (class, index) recorded under another class: ResNet-56 sees a ship in it."""
MODELS = shared_data_dir().parent / "models"
R20, R56 = MODELS / "resnet20_cifar10.th", MODELS / "resnet56_cifar10.th"
CIFAR_TEST = shared_data_dir() / "cifar10" / "test"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_out(out: Path, entries: list[tuple[Path, str, int]]) -> Path:
    """An OUT whose manifest records name copies of ``(photo, class folder, label)``, as generation writes them."""
    OutputFolder(out).write_run_record(CIFAR_TEST)
    records = []
    for i, (photo, folder, label) in enumerate(entries):
        output = f"images/{folder}/{i:03d}_{photo.name}"
        (out / output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, out / output)
        records.append({"index": i, "key": f"{folder}/{photo.name}#{i}", "status": "ok", "source": photo.name,
                        "class_folder": folder, "class_name": prompt_name(folder), "label": label, "output": output,
                        "output_sha256": _sha(out / output)})  # fmt: skip
    ManifestWriter(shard_path(out, 0, 1)).append(records)
    return out


@functools.cache
def _cifar_by_class() -> dict[str, list[Path]]:
    """The first 10 test photos of each CIFAR-10 class."""
    return {c: [i.path for i in items] for c, items in list_images(CIFAR_TEST).subset((), 10).by_class().items()}


def _photo(cls: str, index: int) -> Path:
    return _cifar_by_class()[cls][index]


@pytest.fixture(scope="module")
def cifar_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 real photos of each CIFAR-10 class under their own class, a ship photo recorded as a cat, and two photos
    under a class no CIFAR network knows."""
    entries = [(_photo(c, i), c, label) for label, c in enumerate(CIFAR10_CLASSES) for i in range(PER_CLASS)]
    entries.append((_photo(WRONG[0], WRONG[1]), WRONG[2], CIFAR10_CLASSES.index(WRONG[2])))
    entries += [(_photo("horse", i), "unicorn", 10) for i in range(2)]
    return make_out(tmp_path_factory.mktemp("judge") / "out", entries)


@pytest.fixture
def cifar_out(cifar_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cifar_template, tmp_path / "out"))


def _lines(out: Path) -> dict[str, dict[str, object]]:
    return {line["key"]: line for line in map(json.loads, (out / "judge.jsonl").read_text().splitlines())}


def _argmax_classes(spec: str, out: Path, outputs: list[str]) -> list[str]:
    """What the judge's network sees in each image, by a plain forward pass here."""
    classifier = load_classifier(spec)
    batch = torch.stack([classifier.preprocess(open_image(out / o)) for o in outputs])
    with torch.no_grad():
        return [classifier.classes[i] for i in classifier.classify(batch)[0].tolist()]


def test_cifar_resnets_of_any_depth_load_from_their_keys_and_ids_name_the_weights() -> None:
    r20, r56 = load_resnet20(R20), load_cifar_resnet(R56)
    assert isinstance(r20, ResNet20)
    assert (r20.depth, r56.depth, r56.blocks) == (20, 56, 9)
    assert len(r56.layer3) == 9
    assert not r56.training
    with pytest.raises(ModelLoadError, match="is a ResNet-56, not a ResNet-20"):
        load_resnet20(R56)
    e56 = load_embedder(f"resnet56:{R56}")
    assert e56.id == f"resnet56:{_sha(R56)[:16]}"
    r20_id = f"resnet20:{_sha(R20)[:16]}"
    assert load_embedder(f"cifar-resnet:{R20}").id == load_embedder(f"resnet20:{R20}").id == r20_id
    vectors = e56.embed_images(torch.stack([e56.preprocess(open_image(_photo("cat", 0)))] * 2))
    assert vectors.shape == (2, 64)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2))


def test_class_names_meet_by_normalised_name() -> None:
    mapping = map_classes({"001.Sea_Lion": "Sea Lion", "002.cat": "kitty", "003.dog": "dog", "004.emu": "emu"},
                          ["CAT", "sea lion", "000.Dog"])  # fmt: skip
    assert mapping.to_judge == {"001.Sea_Lion": 1, "002.cat": 0, "003.dog": 2}
    assert mapping.to_out == {1: "001.Sea_Lion", 0: "002.cat", 2: "003.dog"}
    assert mapping.unknown == ("004.emu",)


def test_resnet56_labels_real_photos_far_above_chance_and_a_wrong_class_disagrees(cifar_out: Path) -> None:
    result = judge(cifar_out, f"resnet56:{R56}")
    table = read_manifest(cifar_out)
    assert list(table.columns[-len(JUDGE_COLUMNS) :]) == list(JUDGE_COLUMNS)
    # Exactly what a plain argmax of the network says, for every image.
    assert list(table.judge_class) == _argmax_classes(f"resnet56:{R56}", cifar_out, list(table.output))
    real = table.iloc[: 10 * PER_CLASS]  # each photo under its own class
    assert real.agrees.mean() > 0.6  # 43 of 50 here; chance is 0.1
    wrong = table[table.source.eq(_photo(*WRONG[:2]).name) & table.class_folder.eq(WRONG[2])].iloc[0]
    assert (wrong.judge_class, wrong.agrees, wrong.judge_label) == ("ship", False, CIFAR10_CLASSES.index("ship"))
    judged = table[table.class_folder != "unicorn"]
    assert (judged.agrees == (judged.judge_label == judged.label)).all()
    assert (judged.judge == f"resnet56:{_sha(R56)[:16]}").all()
    assert ((judged.judge_confidence > 0) & (judged.judge_confidence <= 1)).all()
    # A class the judge does not know: labelled, recorded, not judged.
    unknown = table[table.class_folder == "unicorn"]
    assert len(unknown) == 2
    assert unknown.agrees.isna().all()
    assert unknown.judge_class.notna().all()
    assert result.unknown == ("unicorn",)
    assert (result.classes["unicorn"].images, result.classes["unicorn"].judged) == (2, 0)
    assert result.total.judged == 51
    assert result.total.agreed == int(judged.agrees.sum())
    assert result.classes["cat"].images == PER_CLASS + 1
    assert result.judged == len(table)
    assert result.reused == 0
    assert result.by_decision is None
    hashes = [line["output_sha256"] for line in _lines(cifar_out).values()]
    assert hashes == [_sha(cifar_out / o) for o in table.output]


def test_a_rerun_judges_only_new_bytes_and_another_judge_replaces_the_file(cifar_out: Path) -> None:
    judge(cifar_out, f"resnet56:{R56}")
    path = cifar_out / "judge.jsonl"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    again = judge(cifar_out, f"resnet56:{R56}")
    assert (again.judged, again.reused, again.replaced) == (0, 53, None)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    # A cat image's bytes replaced by a ship photo: only it is judged again, and it now disagrees.
    table = read_manifest(cifar_out)
    first_cat = table[table.class_folder == "cat"].iloc[0]
    shutil.copyfile(_photo("ship", 6), cifar_out / first_cat.output)
    old = _lines(cifar_out)
    third = judge(cifar_out, f"resnet56:{R56}")
    assert (third.judged, third.reused) == (1, 52)
    new = _lines(cifar_out)
    assert new[first_cat.key]["output_sha256"] == _sha(cifar_out / first_cat.output)
    assert (new[first_cat.key]["judge_class"], new[first_cat.key]["agrees"]) == ("ship", False)
    assert {k: v for k, v in new.items() if k != first_cat.key} == {k: v for k, v in old.items() if k != first_cat.key}
    # A kill leaves the lines of the batches written so far: the rerun judges the rest.
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:20]))
    resumed = judge(cifar_out, f"resnet56:{R56}")
    assert (resumed.judged, resumed.reused) == (33, 20)
    assert _lines(cifar_out) == new
    # Another judge (the ResNet-20) replaces every line, and says so.
    other = judge(cifar_out, f"resnet20:{R20}")
    assert other.replaced == f"resnet56:{_sha(R56)[:16]}"
    assert other.judged == 53
    assert {line["judge"] for line in _lines(cifar_out).values()} == {f"resnet20:{_sha(R20)[:16]}"}
    assert judge(cifar_out, f"resnet20:{R20}", overwrite=True).judged == 53


def _kill_when(command: list[str], path: Path, ready: Callable[[list[str]], bool], timeout: float = 240) -> list[str]:
    """Start ``command``, SIGKILL it as soon as the lines of ``path`` satisfy ``ready``; those lines."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not ready(lines := path.read_text().splitlines() if path.is_file() else []):
            assert process.poll() is None, "the judge ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    return lines


def test_a_killed_judge_keeps_every_saved_line_and_its_rerun_ends_as_an_uninterrupted_one(cifar_out: Path) -> None:
    judge(cifar_out, f"resnet56:{R56}")
    reference = _lines(cifar_out)
    path, r20 = cifar_out / "judge.jsonl", f"resnet20:{_sha(R20)[:16]}"
    command = cli_command("judge", cifar_out, "--classifier", f"resnet20:{R20}", "-b", "1")
    # Another judge: its checkpoints hold its own lines only (the replaced judge's are gone at once).
    lines = _kill_when(command, path, lambda lines: any(r20 in line for line in lines))
    assert 0 < len(lines) < 53
    assert len(lines) % SAVE_EVERY == 0
    assert all(json.loads(line)["judge"] == r20 for line in lines)
    resumed = judge(cifar_out, f"resnet20:{R20}")
    assert (resumed.judged, resumed.reused) == (53 - len(lines), len(lines))
    judge(cifar_out, f"resnet56:{R56}")
    assert _lines(cifar_out) == reference
    # Images early in the plan changed: the lines of the unchanged ones later in the plan are never lost.
    outputs = list(read_manifest(cifar_out).output)
    for output in outputs[: 2 * SAVE_EVERY]:
        shutil.copyfile(_photo("ship", 7), cifar_out / output)
    new = _sha(_photo("ship", 7))
    command = cli_command("judge", cifar_out, "--classifier", f"resnet56:{R56}", "-b", "1")
    lines = _kill_when(command, path, lambda lines: any(new in line for line in lines))
    assert len(lines) == 53
    assert sum(new in line for line in lines) % SAVE_EVERY == 0


def test_a_train_run_judges_with_its_own_classes_and_transform(cifar_out: Path, tmp_path: Path) -> None:
    from diffcoremix.train.models import create_model

    run = tmp_path / "run"
    run.mkdir()
    classes = [f"{i:03d}.{c.capitalize()}" for i, c in enumerate(CIFAR10_CLASSES)]  # other spellings, same classes
    info = {"model": "resnet20", "classes": classes, "img_size": 32, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "transform": "cifar", "method": "none", "seed": 0}  # fmt: skip
    torch.save({"info": info, "state_dict": create_model("resnet20", 10, init=R20).state_dict()}, run / "model.pt")
    judge(cifar_out, f"resnet20:{R20}")
    by_checkpoint = read_manifest(cifar_out)
    result = judge(cifar_out, str(run))
    by_run = read_manifest(cifar_out)
    assert result.judge.startswith("run:resnet20:")
    assert result.judged == 53
    assert list(by_run.judge_class) == [classes[CIFAR10_CLASSES.index(c)] for c in by_checkpoint.judge_class]
    assert by_run.agrees.tolist() == by_checkpoint.agrees.tolist()  # same weights, names matched across spellings
    assert judge(cifar_out, f"run:{run}").reused == 53


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny generation (2 classes x 2 images), filtered with the tiny embedder (its default)."""
    from diffcoremix import PromptsConfig
    from diffcoremix.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("tiny")
    data = make_class_folders(root / "data", {"001.cat": 2, "002.dog": 2})
    generate(data, root / "out", PromptsConfig(), GenerateConfig(preset="tiny", num_inference_steps=1))
    filter_run(root / "out", FilterConfig(threshold=0.99))
    return root / "out"


@pytest.fixture
def tiny_out(tiny_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_template, tmp_path / "out"))


def test_zero_shot_with_a_text_tower_and_never_the_filters_embedder(
    tiny_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["judge", str(tiny_out), "--classifier", "tiny"]) == 2  # the filter used tiny (seed 0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "never the filter's embedder" in err
    assert "tiny-open-clip-seed0" in err
    assert not (tiny_out / "judge.jsonl").exists()
    assert main(["judge", str(tiny_out), "--classifier", "tiny:1"]) == 0
    table = read_manifest(tiny_out)
    assert table.judge.str.startswith("zero-shot:tiny-open-clip-seed1:").all()
    # The class whose "a photo of a {class}" is closest, computed here with the same embedder.
    embedder = load_embedder("tiny:1")
    texts = embedder.embed_texts(["a photo of a cat", "a photo of a dog"])
    images = embedder.embed_images(torch.stack([embedder.preprocess(open_image(tiny_out / o)) for o in table.output]))
    confidence, index = (100 * images @ texts.T).softmax(dim=1).max(dim=1)  # CLIP's logit scale
    assert list(table.judge_class) == [("001.cat", "002.dog")[i] for i in index.tolist()]
    assert table.judge_confidence.tolist() == pytest.approx(confidence.tolist(), abs=1e-5)
    assert (table.agrees == (table.judge_class == table.class_folder)).all()
    # Agreement among the filter's accepted and rejected images, as the table's columns give it.
    assert table.accepted.any()
    assert not table.accepted.all()
    printed = capsys.readouterr().out.splitlines()
    result = judge(tiny_out, "tiny:1")
    assert result.reused == 4
    assert result.by_decision is not None
    for decision, group in result.by_decision.items():
        rows = table[table.accepted == (decision == "accepted")]
        assert (group.images, group.judged, group.agreed) == (len(rows), len(rows), int(rows.agrees.sum()))
        assert any(line.split()[:4] == [decision, str(len(rows)), str(len(rows)), str(group.agreed)]
                   for line in printed)  # fmt: skip


def test_a_resnet20_train_runs_model_is_an_embedder_seeing_as_the_run_saw_and_never_its_own_judge(
    tiny_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from diffcoremix.train import TrainConfig, load_run, train

    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 2})
    recipe = TrainConfig(model="resnet20", img_size=16, mean=(0.5,), std=(0.25,), batch_size=2, max_steps=2,
                         device="cpu")  # fmt: skip
    run = train(data, config=recipe, output=tmp_path / "run").run
    model_pt = run / "model.pt"
    embedder = load_embedder(f"resnet20:{model_pt}")
    assert embedder.id == f"resnet20:{_sha(model_pt)[:16]}"
    # The run's evaluation transform: 16 x 16, (x - 0.5) / 0.25 on every channel (not CIFAR's 32 x 32 and mean).
    pixels = embedder.preprocess(Image.new("RGB", (40, 40), (64, 128, 192)))
    assert pixels.shape == (3, 16, 16)
    for channel, value in enumerate((64, 128, 192)):
        assert torch.allclose(pixels[channel], torch.full((16, 16), (value / 255 - 0.5) / 0.25), atol=1e-5)
    # Its vectors are the run's own network's pooled features.
    batch = torch.stack([embedder.preprocess(open_image(p)) for p in sorted(data.rglob("*.png"))])
    with torch.no_grad():
        features = load_run(run).model.features_of(batch)
    assert torch.allclose(embedder.embed_images(batch), torch.nn.functional.normalize(features), atol=1e-5)
    # The run's weights filter OUT: as a judge of OUT they are refused, whichever spec names them.
    filter_run(tiny_out, FilterConfig(embedder=f"resnet20:{model_pt}", threshold=0.5))
    for spec in (f"run:{run}", str(run)):
        assert main(["judge", str(tiny_out), "--classifier", spec]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "never the filter's embedder" in err
    assert not (tiny_out / "judge.jsonl").exists()
    # A run of another network is refused as such.
    saved = torch.load(model_pt, weights_only=True)
    torch.save({**saved, "info": {**saved["info"], "model": "resnet18"}}, tmp_path / "resnet18.pt")
    with pytest.raises(ModelLoadError, match="holds a train run's resnet18, not a CIFAR ResNet"):
        load_embedder(f"resnet20:{tmp_path / 'resnet18.pt'}")


def test_the_filters_clip_folder_is_refused_as_judge_by_any_path_that_reaches_its_weights(
    tiny_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_tiny_hf_clip(tmp_path / "models" / "clip")
    filter_run(tiny_out, FilterConfig(embedder=f"hf:{folder}", threshold=0.5))
    (tmp_path / "link").symlink_to(folder)
    shutil.copytree(folder, tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # transformers' "Writing model shards" bar
    # A relative path, a symlink, a detour and a copy: the same weights, so the same model.
    for spec in ("hf:models/clip", f"hf:{tmp_path / 'link'}", "hf:./models/../link", "hf:copy"):
        assert main(["judge", str(tiny_out), "--classifier", spec]) == 2, spec
        # transformers' "Loading weights" bar aside (issue 26, item 6), one line
        lines = [line for line in capsys.readouterr().err.split("\n") if line and "\r" not in line]
        assert len(lines) == 1, lines
        assert "is the filter's embedder" in lines[0]
    assert not (tiny_out / "judge.jsonl").exists()


def test_the_judges_file_outlives_a_refiltering_and_goes_with_overwrite(tiny_out: Path) -> None:
    judge(tiny_out, "tiny:1")
    before = (tiny_out / "judge.jsonl").read_bytes()
    filter_run(tiny_out, FilterConfig(threshold=0.5))
    assert (tiny_out / "judge.jsonl").read_bytes() == before
    assert "agrees" in read_manifest(tiny_out).columns
    clear(OutputFolder(tiny_out))  # what generate/augment --overwrite do first
    assert not (tiny_out / "judge.jsonl").exists()


def test_bad_input_is_one_line_with_exit_2(cifar_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    strangers = make_out(tmp_path / "strangers", [(_photo("cat", 0), "001.widget", 0)])

    def refused(out: Path, spec: str, *words: str) -> None:
        assert main(["judge", str(out), "--classifier", spec]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith("diffcoremix judge: error: ")
        for word in words:
            assert word in err, err

    refused(tmp_path / "missing", f"resnet56:{R56}", "missing does not exist")
    refused(foreign, f"resnet56:{R56}", "is not a diffcoremix output")
    refused(cifar_out, "clipper", "unknown classifier 'clipper'; known: cifar-resnet, hf, open_clip, resnet20, "
            "resnet56, run, tiny, a train RUN folder")  # fmt: skip
    refused(cifar_out, "resnet56:no/such.th", "ResNet-56 checkpoint no/such.th does not exist")
    refused(cifar_out, f"resnet20:{R56}", "is a ResNet-56, not a ResNet-20")
    refused(cifar_out, f"run:{tmp_path}", "is not a finished training run")
    refused(strangers, f"resnet56:{R56}", "knows none of the 1 class(es)", "001.widget", "airplane")
    with pytest.raises(JudgeError):
        judge(strangers, f"resnet56:{R56}")
    assert not (cifar_out / "judge.jsonl").exists()
    assert not (foreign / "judge.jsonl").exists()


def test_damaged_lines_of_the_judge_and_filter_files_are_skipped_and_repaired_by_a_rerun(
    tiny_out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Both files are written atomically, so only something else damages them; OUT must stay usable, and the
    # command that wrote a file must rewrite it whole.
    judge(tiny_out, "tiny:1")
    for name in ("judge.jsonl", "filter.jsonl"):
        lines = (tiny_out / name).read_text().splitlines()
        (tiny_out / name).write_text("\n".join(["[1, 2]", lines[0][:20], *lines[1:]]) + "\n")  # junk, a torn line
    with caplog.at_level("WARNING", logger="diffcoremix"):
        table = read_manifest(tiny_out)
    assert table.accepted.isna().sum() == 1  # the torn decision's candidate is undecided, the others are not
    assert table.agrees.isna().sum() >= 1
    messages = " | ".join(r.getMessage() for r in caplog.records)
    for name in ("judge.jsonl", "filter.jsonl"):
        assert f"{tiny_out / name}: line(s) 1, 2 damaged" in messages
    result = judge(tiny_out, "tiny:1")
    assert result.judged == 1  # only the image whose line was torn
    filter_run(tiny_out, FilterConfig(threshold=0.99))
    for name in ("judge.jsonl", "filter.jsonl"):
        rows = [json.loads(line) for line in (tiny_out / name).read_text().splitlines()]
        assert len(rows) == len({r["key"] for r in rows}) == 4
