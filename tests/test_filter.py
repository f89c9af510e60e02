"""The hard cosine filter: reference rules on hand-made embeddings, and `filter` on tiny generations via the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from diffcoremix import PromptsConfig
from diffcoremix.embedders import load_embedder
from diffcoremix.embedders.resnet20 import load_resnet20
from diffcoremix.filter import FilterConfig, RealIndex, filter_run, score_candidates
from diffcoremix.generate import GenerateConfig, generate, read_manifest
from diffcoremix.identities import weights_sha256

from .helpers import make_class_folders, run_cli, save_tiny_hf_clip, shared_data_dir


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    unit: np.ndarray = v / np.linalg.norm(v)
    return unit


@pytest.fixture
def index() -> RealIndex:
    # Class "a": a0 along x, a1 along y (listing order: a0 first). Class "b": one image along z.
    vectors = {"a/a0.png": _unit(1, 0, 0), "a/a1.png": _unit(0, 1, 0), "b/b0.png": _unit(0, 0, 1)}
    return RealIndex(vectors, {"a": ["a/a0.png", "a/a1.png"], "b": ["b/b0.png"]})


def test_source_rule_compares_with_the_candidates_own_source(index: RealIndex) -> None:
    refs = score_candidates("source", index, np.stack([_unit(0, 1, 0)]), ["a/a1.png"], ["a"])
    assert (refs[0].reference, refs[0].score) == ("a/a1.png", pytest.approx(1.0))


def test_first_rule_takes_the_first_listed_image_whatever_the_source(index: RealIndex) -> None:
    refs = score_candidates("first", index, np.stack([_unit(0, 1, 0)]), ["a/a1.png"], ["a"])
    assert (refs[0].reference, refs[0].score) == ("a/a0.png", pytest.approx(0.0, abs=1e-6))


def test_knn_rule_takes_the_closest_image_of_the_class(index: RealIndex) -> None:
    candidate = _unit(0.2, 1, 0.9)  # closest overall to b0's z? no: knn looks only inside class a
    refs = score_candidates("knn", index, np.stack([candidate]), ["a/a0.png"], ["a"])
    assert refs[0].reference == "a/a1.png"
    assert refs[0].score == pytest.approx(float(candidate @ _unit(0, 1, 0)))


def test_prototype_rule_uses_the_normalised_class_mean(index: RealIndex) -> None:
    refs = score_candidates("prototype", index, np.stack([_unit(1, 1, 0)]), ["a/a0.png"], ["a"])
    assert refs[0].reference == "prototype:a"
    assert refs[0].score == pytest.approx(1.0)


@pytest.fixture(scope="module")
def generated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny generation (two classes of three images, two candidates each), never filtered: tests copy it."""
    root = tmp_path_factory.mktemp("filter")
    data = make_class_folders(root / "data", {"001.cat": 3, "002.dog": 3})
    out = root / "out"
    generate(data, out, PromptsConfig(per_image=2), GenerateConfig(preset="tiny", num_inference_steps=2))
    return out


@pytest.fixture
def generated(generated_template: Path, tmp_path: Path) -> Path:
    """This test's own copy of the generation (filtering writes into it), whatever the other tests did."""
    return Path(shutil.copytree(generated_template, tmp_path / "out"))


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def test_decisions_follow_the_threshold_exactly_and_refiltering_loses_nothing(generated: Path) -> None:
    images_before = _files(generated / "images")
    first = run_cli("filter", generated, "--embedder", "tiny", "--reference", "source", "--threshold", "0.0")
    assert first.returncode == 0, first.stderr
    scores = sorted(read_manifest(generated).score)
    assert len(scores) == 12
    # A threshold equal to a candidate's score keeps it (>=) and rejects every lower one.
    cut = scores[5]
    result = run_cli("filter", generated, "--embedder", "tiny", "--reference", "source", "--threshold", repr(cut))
    assert result.returncode == 0, result.stderr
    table = read_manifest(generated)
    assert (table.accepted == (table.score >= cut)).all()
    assert int(table.accepted.sum()) == sum(s >= cut for s in scores) >= 7
    assert set(table.threshold) == {cut}
    # train/ and rejected/ hold every generated image exactly once, under its class (flat source folders keep
    # their file names), with the content of its images/ file; images/ is untouched.
    expected: dict[bool, dict[str, str]] = {True: {}, False: {}}
    for row in table.itertuples():
        relative = str(Path(row.output).relative_to("images"))
        expected[bool(row.accepted)][f"{row.class_folder}/{Path(row.output).name}"] = images_before[relative]
    train, rejected = _files(generated / "train"), _files(generated / "rejected")
    assert train == expected[True]
    assert rejected == expected[False]
    assert len(train) == int(table.accepted.sum())
    assert len(rejected) == 12 - len(train) > 0
    assert _files(generated / "images") == images_before
    report = json.loads((generated / "filter_report.json").read_text())
    assert sum(c["accepted"] for c in report["classes"].values()) == len(train)
    assert (generated / "filter_report" / "001.cat.png").is_file()
    # The printed table says the same.
    all_line = next(line.split() for line in result.stdout.splitlines() if line.startswith("all "))
    assert all_line[:4] == ["all", "12", str(len(train)), str(12 - len(train))]


def test_second_run_hits_the_cache(generated: Path) -> None:
    config = FilterConfig(embedder="tiny", threshold=0.5, reference="source")
    filter_run(generated, config)
    again = filter_run(generated, config)
    assert again.cache_misses == 0
    assert again.cache_hits == 6 + 12  # six real images, twelve generated


def test_an_altered_or_moved_cache_entry_is_recomputed_not_trusted(generated: Path) -> None:
    import io

    from diffcoremix.embedders.cache import TAG_BYTES

    config = FilterConfig(embedder="tiny", threshold=0.5, reference="source")
    first = json.loads(json.dumps(filter_run(generated, config).to_dict()["classes"]))
    entries = sorted((generated / "cache").rglob("*.npy"))
    assert len(entries) == 18
    vector = np.load(entries[0])  # numpy still reads an entry (the tag follows the array)
    altered = io.BytesIO()
    np.save(altered, -vector)  # loadable, and wrong
    data = entries[0].read_bytes()
    entries[0].write_bytes(altered.getvalue() + data[-TAG_BYTES:])
    shutil.copyfile(entries[2], entries[1])  # a valid entry under another image's key
    entries[3].write_bytes(entries[3].read_bytes()[:-1])  # torn
    again = filter_run(generated, config)
    assert again.cache_misses == 3
    assert again.cache_hits == 15
    assert json.loads(json.dumps(again.to_dict()["classes"])) == first  # the same scores as before the damage
    assert np.allclose(np.load(entries[0]), vector, atol=1e-6)  # rewritten (recomputed in a smaller batch)


def test_output_loads_with_image_folder_and_datasets(generated: Path, tmp_path: Path) -> None:
    import datasets

    report = filter_run(generated, FilterConfig(embedder="tiny", threshold=-1.0))  # keep everything
    assert sum(c.accepted for c in report.classes.values()) == 12
    folder = ImageFolder(str(generated / "train"))
    assert folder.classes == ["001.cat", "002.dog"]
    assert len(folder) == 12
    image, label = folder[0]
    assert image.size == (64, 64)
    assert label == 0
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(generated / "train"), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert loaded.num_rows == 12
    # metadata.jsonl carries DATA's class index as `label` (and the prompt, score and source of each image)
    assert sorted(loaded["label"]) == sorted(folder.targets) == [0] * 6 + [1] * 6
    assert set(loaded.column_names) >= {"image", "label", "prompt", "score", "source"}


def test_calibrate_reports_and_changes_nothing(generated: Path) -> None:
    filter_run(generated, FilterConfig(embedder="tiny", threshold=0.5, reference="source"))
    before = {name: (generated / name).read_bytes() for name in ("filter.jsonl", "filter_report.json")}
    views = _files(generated / "train"), _files(generated / "rejected")
    result = run_cli("filter", generated, "--embedder", "tiny", "--reference", "source", "--calibrate")
    assert result.returncode == 0, result.stderr
    assert "suggested threshold" in result.stdout
    assert "001.cat" in result.stdout
    calibration = json.loads((generated / "calibration.json").read_text())
    assert set(calibration["calibration"]) == {"001.cat", "002.dog"}
    assert calibration["calibration"]["001.cat"]["pairs"] == 3
    assert {name: (generated / name).read_bytes() for name in before} == before
    assert (_files(generated / "train"), _files(generated / "rejected")) == views


def test_calibrate_suggests_a_threshold_per_reference_rule(generated: Path) -> None:
    suggested = {}
    for rule in ("source", "prototype", "knn", "first"):
        report = filter_run(generated, FilterConfig(embedder="tiny", reference=rule, calibrate=True))
        assert report.reference == rule
        counted = "pairs" if rule == "source" else "count"
        assert report.calibration["001.cat"][counted] == {"source": 3, "first": 2}.get(rule, 3)
        suggested[rule] = report.suggested_threshold
    assert len(set(suggested.values())) == 4, suggested


def _filter_in_process(out: Path, data: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """``filter OUT --data DATA ARGS`` through the real entry point: its DATA warning lines."""
    from diffcoremix.cli.main import main

    capsys.readouterr()
    assert main(["filter", str(out), "--data", str(data), "--embedder", "tiny", "--threshold", "0.5", *args]) == 0
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("diffcoremix: WARNING: DATA ")]


def test_only_the_real_images_of_the_candidates_classes_are_decoded(
    generated_template: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unusable file of DATA in a class without candidates is not decoded (so not named) and changes no decision;
    one in a class with candidates is named in the warning line and left out, whatever the rule (each candidate's
    nearest real image is sought in its whole class): with ``first``, the next usable image of its class is the
    first."""
    data = Path(shutil.copytree(generated_template.parent / "data", tmp_path / "data"))  # this test's own DATA
    baseline = {}
    for rule in ("first", "source"):
        assert _filter_in_process(generated, data, capsys, "--reference", rule) == []
        baseline[rule] = (generated / "filter.jsonl").read_bytes()
    (data / "003.eel").mkdir()
    (data / "003.eel" / "zzz.png").write_bytes(b"")  # a class of DATA without candidates: never read
    for rule in ("first", "source"):
        assert _filter_in_process(generated, data, capsys, "--reference", rule) == [], rule
        assert (generated / "filter.jsonl").read_bytes() == baseline[rule], rule
    shutil.rmtree(data / "003.eel")  # (calibration reads every class)
    # A class with candidates is read whole, by every rule and by calibration: the file is named, and left out.
    (data / "001.cat" / "zzz.png").write_bytes(b"")  # listed last, no candidate's source
    for args in (("--reference", "source"), ("--reference", "prototype"), ("--reference", "first", "--calibrate")):
        (line,) = _filter_in_process(generated, data, capsys, *args)
        assert "skipped 1 image(s) that cannot be used (empty_file 1; first: 001.cat/zzz.png: " in line, args
        if args[1] == "source":  # the decisions are those without it
            assert (generated / "filter.jsonl").read_bytes() == baseline["source"]
    (data / "002.dog" / "img_000.png").write_bytes(b"not an image")  # the first two of their class
    (data / "002.dog" / "img_001.png").write_bytes(b"")
    (line,) = _filter_in_process(generated, data, capsys, "--reference", "first")
    assert "skipped 3 image(s) that cannot be used (empty_file 2, not_an_image 1; first: 001.cat/zzz.png: " in line
    table = read_manifest(generated)
    assert set(table[table.class_folder == "002.dog"].reference) == {"002.dog/img_002.png"}
    assert set(table[table.class_folder == "001.cat"].reference) == {"001.cat/img_000.png"}


def _text_scores(generated: Path) -> np.ndarray:
    """The candidates' text scores, from a filtering that keeps everything."""
    filter_run(generated, FilterConfig(embedder="tiny", reference="source", threshold=-1.0, text_check=-1.0))
    table = read_manifest(generated)
    assert table.text_score.notna().all()
    assert table.accepted.all()
    return np.sort(table.text_score.to_numpy(dtype=float))


def test_text_check_rejects_all_when_no_text_score_can_reach_it(generated: Path) -> None:
    report = filter_run(generated, FilterConfig(embedder="tiny", threshold=-1.0, text_check=1.0))
    table = read_manifest(generated)
    assert table.text_score.notna().all()
    # a text score of exactly 1.0 is (practically) impossible: everything is rejected by the text check
    assert sum(c.accepted for c in report.classes.values()) == int((table.text_score >= 1.0).sum()) == 0


def test_text_check_alone_splits_at_its_threshold(generated: Path) -> None:
    text_check = float(_text_scores(generated)[6])  # the upper median: a candidate sits exactly on it
    filter_run(generated, FilterConfig(embedder="tiny", reference="source", threshold=-1.0, text_check=text_check))
    table = read_manifest(generated)
    assert (table.accepted == (table.text_score >= text_check)).all()
    assert int(table.accepted.sum()) == 6  # the six upper text scores, the one equal to text_check included


def test_both_checks_must_pass(generated: Path) -> None:
    text_check = float(_text_scores(generated)[6])
    threshold = float(np.sort(read_manifest(generated).score.to_numpy(dtype=float))[6])
    config = FilterConfig(embedder="tiny", reference="source", threshold=threshold, text_check=text_check)
    filter_run(generated, config)
    table = read_manifest(generated)
    image_ok, text_ok = table.score >= threshold, table.text_score >= text_check
    # Candidates that pass one check only exist on both sides, so "and" differs from either check and from "or".
    assert (image_ok & ~text_ok).any()
    assert (~image_ok & text_ok).any()
    assert (table.accepted == (image_ok & text_ok)).all()
    assert table.accepted.any()
    assert not table.accepted.all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--threshold", "2"), "--threshold must be in [-1, 1], got 2.0"),
        (("--reference", "nearest"), "--reference must be one of first, knn, prototype, source, got 'nearest'"),
        (
            ("--embedder", "clipper"),
            "unknown embedder 'clipper'; known: cifar-resnet, hf, open_clip, resnet20, resnet56, tiny",
        ),
        (("--embedder", "resnet20:no/such.th"), "ResNet-20 checkpoint no/such.th does not exist"),
    ],
)
def test_bad_filter_options_fail_in_one_line(generated: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("filter", generated, *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"diffcoremix filter: error: {message}"]


def test_offline_open_clip_embedder_names_the_alternatives(generated: Path) -> None:
    result = run_cli("filter", generated, "--embedder", "open_clip:ViT-B-32:openai", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "cannot load open_clip model 'ViT-B-32' with weights 'openai'" in line
    assert "--embedder tiny" in line


@pytest.mark.shared_data
def test_resnet20_loads_the_shared_checkpoint_and_classifies() -> None:
    path = shared_data_dir().parent / "models" / "resnet20_cifar10.th"
    model = load_resnet20(path)
    embedder = load_embedder(f"resnet20:{path}")
    from diffcoremix.data import list_images, open_image

    listing = list_images(shared_data_dir() / "cifar10" / "test")
    items = [i for items in listing.by_class().values() for i in items[:10]]
    batch = torch.stack([embedder.preprocess(open_image(i.path)) for i in items])
    with torch.no_grad():
        accuracy = (model(batch).argmax(1) == torch.tensor([i.label for i in items])).float().mean().item()
    assert accuracy > 0.6  # about 0.8 on these JPEG re-encoded test images
    vectors = embedder.embed_images(batch)
    assert vectors.shape == (100, 64)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(100))


def test_sample_context_takes_the_best_matching_context_with_top_k_1(tmp_path: Path) -> None:
    from diffcoremix import build_prompts, load_pack
    from diffcoremix.data import open_image

    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 2})
    plan = build_prompts(data, PromptsConfig(pack="pets", context="sample", context_embedder="tiny", top_k=1))
    embedder = load_embedder("tiny")
    contexts = list(load_pack("pets").contexts)
    for record in plan.records:
        image = embedder.embed_images(embedder.preprocess(open_image(data / record.source))[None])[0]
        texts = embedder.embed_texts([f"a photo of a {record.class_name}, {c}" for c in contexts])
        sims = (texts @ image).numpy()
        assert record.context == contexts[int(sims.argmax())]
        assert record.context_score == pytest.approx(float(sims.max()), abs=1e-5)


def test_sample_context_draws_within_top_k_and_reaches_the_manifest(tmp_path: Path) -> None:
    from diffcoremix import load_pack
    from diffcoremix.data import open_image

    data = make_class_folders(tmp_path / "data", {"001.cat": 3})
    out = tmp_path / "out"
    result = run_cli(
        "generate", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1", "--per-image", "4",
        "--pack", "pets", "--context", "sample", "--context-embedder", "tiny", "--top-k", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = read_manifest(out)
    assert len(table) == 12
    # Each source image's three best contexts, computed here with the same tiny embedder.
    embedder = load_embedder("tiny")
    contexts = list(load_pack("pets").contexts)
    for row in table.itertuples():
        image = embedder.embed_images(embedder.preprocess(open_image(data / row.source))[None])[0]
        texts = embedder.embed_texts([f"a photo of a {row.class_name}, {c}" for c in contexts])
        sims = dict(zip(contexts, (texts @ image).tolist(), strict=True))
        third_best = sorted(sims.values(), reverse=True)[2]
        assert sims[row.context] >= third_best - 1e-5, (row.context, sims)
        assert row.context_score == pytest.approx(sims[row.context], abs=1e-5)
    assert table.context.nunique() > 1  # four draws per image among its top 3


def test_sample_context_needs_a_text_tower(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 1})
    checkpoint = shared_data_dir().parent / "models" / "resnet20_cifar10.th"
    result = run_cli(
        "prompts",
        data,
        "-o",
        tmp_path / "p.jsonl",
        "--context",
        "sample",
        "--context-embedder",
        f"resnet20:{checkpoint}",
    )
    assert result.returncode == 2
    assert "--context-embedder must be an image-text embedder (a CLIP model) for sample" in result.stderr


def test_transformers_clip_from_a_local_folder(generated: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    save_tiny_hf_clip(folder)
    result = run_cli("filter", generated, "--embedder", f"hf:{folder}", "--threshold", "0.5", "--text-check", "-1",
                     env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = read_manifest(generated)
    assert set(table.embedder) == {f"hf-clip:{weights_sha256(folder)[:16]}"}  # named by its weights, not its path
    assert (table.accepted == (table.score >= 0.5)).all()
    assert table.text_score.notna().all()


def test_the_config_knows_every_registered_reference_rule() -> None:
    from diffcoremix.filter import REFERENCE_RULES
    from diffcoremix.filter.config import REFERENCE_RULE_NAMES

    assert list(REFERENCE_RULE_NAMES) == REFERENCE_RULES.names()
