"""The safety checker's verdict (issue 26): a model that ships a checker (a real ``StableDiffusionSafetyChecker`` at
tiny size, saved with the tiny SD pipeline in the hub layout and given as ``--model PATH``) has what it flags recorded
as ``flagged``, never ``ok``, never an image, never in ``train/``; counted by generate, the filter and the report;
regenerated with a new seed by ``augment --retries``; ``--safety-checker on|off`` is a recorded setting."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffcoremix import PromptsConfig
from diffcoremix.augmentation import augment
from diffcoremix.config import build_config, load_config_file
from diffcoremix.filter import FilterConfig
from diffcoremix.generate import GenerateConfig, read_manifest
from diffcoremix.generate.safety import apply_setting
from diffcoremix.report import build_report
from diffcoremix.seeds import derive_seed

from .helpers import make_class_folders, run_in_process, save_tiny_checked_sd

FAST = ("--preset", "tiny", "--num-inference-steps", "1")
CHECKER = "StableDiffusionSafetyChecker"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checked")
    return {
        "flag_all": save_tiny_checked_sd(root / "flag-all", flag_all=True),
        "flag_none": save_tiny_checked_sd(root / "flag-none", flag_all=False),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("safety") / "data", {"001.cat": 2, "002.dog": 1})


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder`` (lock files aside): content hash and modification time."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".diffcoremix")
    }


def _settings(out: Path) -> dict[str, Any]:
    return json.loads((out / "settings.json").read_text())["settings"]  # type: ignore[no-any-return]


def test_what_the_checker_flags_is_recorded_as_flagged_and_no_image_is_kept(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_in_process(capsys, "generate", data, "-o", out, *FAST, "--model", models["flag_all"])
    assert result.returncode == 0, result.stderr
    assert "0 generated, 0 already done, 0 failed, 3 flagged by the safety checker (3 of 3" in result.stdout
    table = read_manifest(out)
    assert list(table.status) == ["flagged"] * 3
    assert table.output.isna().all()
    assert table.output_sha256.isna().all()
    assert all(CHECKER in e and "--safety-checker off" in e for e in table.error)
    assert set(table.safety_checker) == {CHECKER}
    assert not [p for p in out.rglob("*.png")]  # the black images are not kept
    assert _settings(out)["safety_checker"] is None  # the model's own: recorded
    # The verdict is a fact of the seed and the settings: a rerun keeps it, makes nothing and changes no file.
    before = _files(out)
    again = run_in_process(capsys, "generate", data, "-o", out, *FAST, "--model", models["flag_all"])
    assert again.returncode == 0, again.stderr
    assert "0 generated, 3 already done, 0 failed (3 of 3" in again.stdout
    assert _files(out) == before


def test_augment_retries_a_flagged_candidate_with_a_new_seed_and_places_none(
    models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    generate = GenerateConfig(preset="tiny", num_inference_steps=1, model=str(models["flag_all"]))
    keep_all = FilterConfig(embedder="tiny", threshold=-1.0)  # any image at all would be kept
    result = augment(data, out, PromptsConfig(), generate, keep_all, retries=1)
    table = read_manifest(out)
    assert list(table.status) == ["flagged"] * 6
    first, retried = table[table.attempt == 0], table[table.attempt == 1]
    assert len(first) == len(retried) == 3
    # each retry is its candidate's regeneration, with the seed derived for attempt 1 (recorded), under its own key
    for old, new in zip(first.itertuples(), retried.itertuples(), strict=True):
        assert new.key == f"{old.key}@r1"
        assert new.seed == derive_seed(old.seed, "retry", 1) != old.seed
    assert result.accepted == {}
    assert result.shortfall == {"001.cat": 2, "002.dog": 1}
    assert result.attempts == 2
    assert not [p for p in out.rglob("*.png") if "filter_report" not in p.parts]  # no image, in images/ or train/
    counted = {c: r.flagged for c, r in result.report.classes.items()}
    assert counted == {"001.cat": 4, "002.dog": 2}
    report = json.loads((out / "filter_report.json").read_text())
    assert {c: r["flagged"] for c, r in report["classes"].items()} == counted
    assert all(r["candidates"] == r["accepted"] == 0 for r in report["classes"].values())
    assert "flagged" in result.report.to_text().splitlines()[1]
    assert re.search(r"^all .* 6$", result.report.to_text(), re.MULTILINE)
    # The HTML report counts them, in the overview and per class, and names the checker.
    html = build_report(out, tmp_path / "report.html").path.read_text()
    assert "<b>6</b>flagged by the safety checker" in html
    assert '<td class="num">0</td><td class="num">4</td>' in html  # 001.cat: failed 0, flagged 4
    assert f"<td>safety checker</td><td>the model&#39;s own: {CHECKER}</td>" in html
    # A rerun of the finished job replays its rounds from the records: nothing generated, no file changed.
    before = _files(out)
    augment(data, out, PromptsConfig(), generate, keep_all, retries=1)
    assert _files(out) == before


def test_safety_checker_off_keeps_the_images_and_is_a_recorded_setting(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    off, passed = tmp_path / "off", tmp_path / "passed"
    result = run_in_process(capsys, "generate", data, "-o", off, *FAST, "--model", models["flag_all"],
                            "--safety-checker", "off")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 generated, 0 already done, 0 failed (3 of 3" in result.stdout
    table = read_manifest(off)
    assert list(table.status) == ["ok"] * 3
    assert table.safety_checker.isna().all()  # none ran
    assert _settings(off)["safety_checker"] == "off"
    # A checker that flags nothing keeps every image, and checking does not change them: the same bytes as off.
    result = run_in_process(capsys, "generate", data, "-o", passed, *FAST, "--model", models["flag_none"])
    assert result.returncode == 0, result.stderr
    checked = read_manifest(passed)
    assert list(checked.status) == ["ok"] * 3
    assert set(checked.safety_checker) == {CHECKER}
    assert list(checked.output_sha256) == list(table.output_sha256)
    for row in checked.itertuples():
        assert np.asarray(Image.open(passed / row.output)).max() > 0  # not blacked out
    # Another value is other settings: refused in one line, OUT left as it was.
    before = _files(off)
    again = run_in_process(capsys, "generate", data, "-o", off, *FAST, "--model", models["flag_all"])
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1
    assert "settings.safety_checker: 'off' -> None" in again.stderr
    assert _files(off) == before


def test_off_never_loads_the_checker_and_a_pipeline_holding_one_has_it_dropped(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """``off`` passes ``safety_checker=None`` to the load: a folder whose checker weights were deleted (1.2 GB in
    sd15's repository) still loads, while the model's own setting needs them."""
    import shutil

    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "no-checker-weights"
    shutil.copytree(models["flag_all"], folder)
    shutil.rmtree(folder / "safety_checker")
    refused = run_in_process(capsys, "generate", data, "-o", tmp_path / "a", *FAST, "--model", folder)
    assert refused.returncode == 2
    result = run_in_process(capsys, "generate", data, "-o", tmp_path / "b", *FAST, "--model", folder,
                            "--safety-checker", "off")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert set(read_manifest(tmp_path / "b").status) == {"ok"}
    # A pipeline that holds a checker all the same (one built in the process, say) has it dropped.
    pipe = StableDiffusionPipeline.from_pretrained(models["flag_all"])
    assert apply_setting(pipe, None, "flag-all") == CHECKER
    assert apply_setting(pipe, "off", "flag-all") is None
    assert pipe.safety_checker is None


def test_on_for_a_model_without_a_checker_is_one_line_and_on_with_one_checks(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    result = run_in_process(capsys, "generate", data, "-o", tmp_path / "a", *FAST, "--safety-checker", "on")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--safety-checker must be off or unset for builtin:tiny-sd, which ships no safety checker" in result.stderr
    assert not (tmp_path / "a" / "run.json").exists()
    result = run_in_process(capsys, "generate", data, "-o", tmp_path / "b", *FAST, "--model", models["flag_all"],
                            "--safety-checker", "on")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert set(read_manifest(tmp_path / "b").status) == {"flagged"}
    assert _settings(tmp_path / "b")["safety_checker"] == "on"
    bad = run_in_process(capsys, "generate", data, "-o", tmp_path / "c", *FAST, "--safety-checker", "maybe")
    assert bad.returncode == 2
    assert "invalid choice: 'maybe'" in bad.stderr


def test_a_config_file_may_say_off_bare(tmp_path: Path) -> None:
    """YAML 1.1 reads a bare ``off`` as false: the option takes it as ``off``."""
    path = tmp_path / "c.yaml"
    path.write_text("generate:\n  safety_checker: off\n")
    assert (
        build_config(GenerateConfig, load_config_file(path, "generate"), {}, section="generate").safety_checker == "off"
    )
    path.write_text("generate:\n  safety_checker: on\n")
    assert (
        build_config(GenerateConfig, load_config_file(path, "generate"), {}, section="generate").safety_checker == "on"
    )


def _concept_cosines(model: Path, images: list[Path]) -> np.ndarray:
    """The cosine of each image's embedding with the checker's first concept, as the checker computes it."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance
    from transformers import CLIPImageProcessor

    checker = StableDiffusionSafetyChecker.from_pretrained(model / "safety_checker")
    processor = CLIPImageProcessor.from_pretrained(model / "feature_extractor")
    pixels = processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
        return cosine_distance(embeds, checker.concept_embeds)[:, 0].numpy()  # type: ignore[no-any-return]


def test_a_checker_that_flags_some_flags_exactly_those_and_the_rest_is_kept(
    models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """Mixed batches: each flag lands on its own candidate, and only the unflagged images reach ``train/``."""
    import shutil

    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    prompts, keep_all = PromptsConfig(per_image=2), FilterConfig(embedder="tiny", threshold=-1.0)
    generate = GenerateConfig(preset="tiny", num_inference_steps=1, batch_size=4, model=str(models["flag_none"]))
    augment(data, tmp_path / "clean", prompts, generate, keep_all)
    clean = read_manifest(tmp_path / "clean")
    cosines = _concept_cosines(models["flag_none"], [tmp_path / "clean" / o for o in clean.output])
    # a threshold in the widest gap between the middle cosines: the checker flags the images above it
    ordered = np.sort(cosines)
    gap = max(range(1, len(ordered) - 1), key=lambda i: ordered[i + 1] - ordered[i])
    assert ordered[gap + 1] - ordered[gap] > 0.002  # the checker rounds its scores to 0.001
    threshold = float(ordered[gap] + ordered[gap + 1]) / 2
    some = tmp_path / "flag-some"
    shutil.copytree(models["flag_none"], some)
    checker = StableDiffusionSafetyChecker.from_pretrained(some / "safety_checker")
    checker.concept_embeds_weights.data[0] = threshold
    checker.save_pretrained(some / "safety_checker")

    out = tmp_path / "out"
    augment(data, out, prompts, GenerateConfig(**{**vars(generate), "model": str(some)}), keep_all)
    table = read_manifest(out)
    expected = ["flagged" if c > threshold else "ok" for c in cosines]
    assert list(table.status) == expected
    assert 0 < expected.count("flagged") < len(expected)
    kept = table[table.status == "ok"]
    # the unflagged images are the clean run's bytes, and they alone are placed in train/
    assert list(kept.output_sha256) == list(clean.output_sha256[table.status == "ok"])
    placed = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "train").rglob("*.png"))
    assert placed == sorted(kept.output_sha256)
    report = json.loads((out / "filter_report.json").read_text())
    assert sum(r["flagged"] for r in report["classes"].values()) == expected.count("flagged")
