"""Counterpart modes (img2img, cross-class, edit, inpaint) on the tiny presets: the real diffusers pipeline classes.

What each mode must show: its counterpart is a function of (source, seed, settings), so changing a source photo
changes its counterpart and no other; a killed run resumes to the same files; cross-class records carry Diff-Mix's
soft label; options a mode cannot use are refused in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffcoremix.errors import ConfigError, ModelLoadError
from diffcoremix.generate import DiffusersGenerator, GenerateConfig, RunConflictError, generate, read_manifest
from diffcoremix.generate.backend import load_pipeline
from diffcoremix.generate.config import resolve_settings
from diffcoremix.generate.runner import settings_digest
from diffcoremix.modes import COUNTERPART_NAMES, Conditioning, fit
from diffcoremix.prompts import PromptsConfig

from . import faultkit
from .helpers import make_class_folders, run_in_process

IMAGE_MODES = ("img2img", "cross-class", "edit")
"""The modes that read the source photo and need nothing else (inpaint needs masks: tests/test_inpaint.py)."""


def _tiny(counterpart: str, **kwargs: Any) -> GenerateConfig:
    return GenerateConfig(**{"preset": "tiny", "num_inference_steps": 4, "height": 32, "width": 32,
                             "counterpart": counterpart, **kwargs})  # fmt: skip


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", {"cat": 2, "dog": 2, "fox": 1})


def _images(out: Path) -> dict[str, str]:
    """Each candidate key's image digest."""
    table = read_manifest(out)
    return {r["key"]: r["output_sha256"] for r in table.to_dict("records") if r["status"] == "ok"}


@pytest.mark.parametrize("mode", IMAGE_MODES)
def test_a_counterpart_is_a_function_of_its_source(mode: str, data: Path, tmp_path: Path) -> None:
    first = _images(tmp_path / "a") if generate(data, tmp_path / "a", PromptsConfig(), _tiny(mode)) else {}
    again = _images(tmp_path / "b") if generate(data, tmp_path / "b", PromptsConfig(), _tiny(mode)) else {}
    assert len(first) == 5
    assert first == again

    changed = tmp_path / "data2"
    shutil.copytree(data, changed)
    photo = changed / "dog" / "img_000.png"
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    Image.fromarray(255 - pixels).save(photo)  # another photo at the same path: its counterpart must change
    other = _images(tmp_path / "c") if generate(changed, tmp_path / "c", PromptsConfig(), _tiny(mode)) else {}
    assert {k for k in first if first[k] != other[k]} == {"dog/img_000.png#0"}


def test_a_text_counterpart_keeps_no_pixel_of_its_source(data: Path, tmp_path: Path) -> None:
    # the contrast that gives the test above its meaning: text-to-image reads the prompt only
    changed = tmp_path / "data2"
    shutil.copytree(data, changed)
    photo = changed / "dog" / "img_000.png"
    Image.fromarray(255 - np.asarray(Image.open(photo).convert("RGB"))).save(photo)
    generate(data, tmp_path / "a", PromptsConfig(), _tiny("text"))
    generate(changed, tmp_path / "b", PromptsConfig(), _tiny("text"))
    assert _images(tmp_path / "a") == _images(tmp_path / "b")


def test_cross_class_records_carry_diff_mix_soft_labels(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(per_image=3), _tiny("cross-class", soft_label_gamma=0.5))
    rows = read_manifest(out).to_dict("records")
    classes = ["cat", "dog", "fox"]
    assert len(rows) == 15
    strengths = set()
    for row in rows:
        source_class = row["source"].split("/")[0]
        soft = row["soft_label"]
        assert row["counterpart"] == "cross-class"
        assert row["source_class_folder"] == source_class
        target = row["target_class_folder"]
        assert target in classes
        assert target != source_class
        assert set(soft) == {source_class, target}
        assert math.isclose(sum(soft.values()), 1.0, abs_tol=1e-9)
        assert math.isclose(soft[target], row["strength"] ** 0.5, rel_tol=1e-12)  # (1 - s^g) A + s^g B
        assert row["class_folder"] == max(soft, key=soft.get)
        assert row["label"] == classes.index(row["class_folder"])
        assert f" {target}," in row["prompt"]  # the prompt names the other class
        strengths.add(row["strength"])
    assert strengths <= {0.3, 0.5, 0.7, 0.9}
    assert len(strengths) >= 2


def test_img2img_strengths_are_drawn_per_candidate_and_recorded(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(per_image=4), _tiny("img2img", strength=(0.25, 0.75)))
    rows = read_manifest(out).to_dict("records")
    assert {r["strength"] for r in rows} == {0.25, 0.75}
    assert all(r["pipeline"] == "StableDiffusionImg2ImgPipeline" and r["status"] == "ok" for r in rows)
    assert all(json.loads(r["condition"]) == ["img2img", r["strength"], None, None] for r in rows)


def test_a_strength_near_zero_gives_back_the_vae_round_trip_of_the_source(data: Path) -> None:
    settings = resolve_settings(_tiny("img2img", num_inference_steps=100))
    pipe, provenance = load_pipeline(settings)
    generator = DiffusersGenerator(pipe, settings, provenance)
    source = fit(Image.open(data / "cat" / "img_000.png").convert("RGB"), 32, 32)

    def made(strength: float) -> np.ndarray:
        image = generator.generate(["a cat"], [""], [0], [Conditioning(image=source, strength=strength)])[0]
        assert isinstance(image, Image.Image)
        return np.asarray(image, dtype=np.float64)

    import torch

    with torch.no_grad():  # the VAE's own round trip, with the latents img2img draws from the same seed
        pixels = torch.from_numpy(np.asarray(source, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        latents = pipe.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0))
        decoded = pipe.vae.decode(latents).sample[0].permute(1, 2, 0).clamp(-1, 1)
        round_trip = ((decoded.numpy() + 1) * 127.5).round()
    near, far = np.abs(made(0.01) - round_trip).mean(), np.abs(made(0.9) - round_trip).mean()
    print(f"mean absolute difference from the VAE round trip: {near:.2f} at strength 0.01, {far:.2f} at 0.9")
    # The tiny UNet's weights are random, so its one denoising step at strength 0.01 still moves the latents a
    # little; the fine-tuned generator's figure is in benchmarks/README.md (generation_quality.py).
    assert near * 4 < far


def test_edit_needs_an_instruct_pix2pix_model(data: Path, tmp_path: Path) -> None:
    settings = resolve_settings(_tiny("edit", model="builtin:tiny-sd"))  # a text-to-image UNet: 4 input channels
    pipe, provenance = load_pipeline(settings)
    with pytest.raises(ModelLoadError, match=r"InstructPix2Pix model .*8 input channels"):
        DiffusersGenerator(pipe, settings, provenance)
    with pytest.raises(ConfigError, match="InstructPix2Pix"):
        resolve_settings(GenerateConfig(preset="tiny-sdxl", counterpart="edit"))  # a preset that names none


def test_edit_uses_the_instruction_pack_unless_another_is_given(data: Path, tmp_path: Path) -> None:
    generate(data, tmp_path / "a", PromptsConfig(), _tiny("edit"))
    rows = read_manifest(tmp_path / "a").to_dict("records")
    assert all(r["prompt"].startswith("a transformed version of the image of a") for r in rows)
    assert {r["pipeline"] for r in rows} == {"StableDiffusionInstructPix2PixPipeline"}
    assert {r["image_guidance_scale"] for r in rows} == {1.5}
    generate(data, tmp_path / "b", PromptsConfig(pack="generic"), _tiny("edit"))
    assert all(r["prompt"].startswith("a photo of") for r in read_manifest(tmp_path / "b").to_dict("records"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--strength", "0.5"), "strength.*it has no strength"),
        (("--counterpart", "img2img", "--strength", "1.5"), r"strength.*\(0, 1\]"),
        (("--counterpart", "inpaint"), "masks.*one of the two"),
        (("--counterpart", "img2img", "--masks", "m"), "masks.*null unless --counterpart inpaint"),
        (("--counterpart", "sketch"), "counterpart.*one of .*cross-class.*img2img"),
        (("--counterpart", "img2img", "--strength", "0.2", "--num-inference-steps", "4"), "steps.*>= 5"),
    ],
)
def test_options_a_mode_cannot_use_are_refused_in_one_line(
    args: tuple[str, ...], message: str, data: Path, tmp_path: Path, capsys: Any
) -> None:
    done = run_in_process(capsys, "generate", str(data), "-o", str(tmp_path / "out"), "--preset", "tiny", *args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_another_strength_is_another_run(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), _tiny("img2img", strength=(0.5,)))
    with pytest.raises(RunConflictError, match="counterpart"):
        generate(data, out, PromptsConfig(), _tiny("img2img", strength=(0.6,)))
    summary = generate(data, out, PromptsConfig(), _tiny("img2img", strength=(0.5,)))
    assert summary.skipped == summary.shard == 5
    assert summary.generated == 0


def test_a_text_run_keeps_the_digest_of_runs_made_before_modes_existed() -> None:
    # an OUT made before counterpart modes resumes: a text run's settings digest is the digest of the same fields
    settings = resolve_settings(GenerateConfig(preset="tiny"))
    fields = json.loads(json.dumps(dataclasses.asdict(settings)))
    assert fields.pop("counterpart") is None
    expected = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    assert settings_digest(settings) == expected
    assert settings_digest(resolve_settings(GenerateConfig(preset="tiny", counterpart="img2img"))) != expected


def test_every_mode_is_listed() -> None:
    assert set(COUNTERPART_NAMES) == {"text", "img2img", "inpaint", "edit", "cross-class"}


@pytest.mark.slow  # two subprocess runs and a killed one (20-45 s): make test-all
def test_a_killed_cross_class_run_resumes_to_the_same_files(data: Path, tmp_path: Path) -> None:
    args = ("generate", str(data), "-o", "{out}", *faultkit.TINY_GENERATION, "--counterpart", "cross-class",
            "--num-inference-steps", "4", "--batch-size", "2", "--per-image", "2")  # fmt: skip
    job = faultkit.Job("generate", args, faultkit.GENERATION_PHASES, faultkit.generation_state)
    ref = faultkit.reference(job, tmp_path / "ref")
    out = faultkit.fresh(job, tmp_path / "out")
    stopped = faultkit.run(job, out, kill_at=("image", 3))
    assert faultkit.killed(stopped), stopped.stderr
    faultkit.assert_resumes(job, out, ref)


def test_training_reads_a_cross_class_counterparts_soft_label(data: Path, tmp_path: Path) -> None:
    from diffcoremix.filter import FilterConfig, filter_run
    from diffcoremix.mix import PairedDataset

    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), _tiny("cross-class"))
    filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0))  # every candidate kept
    rows = read_manifest(out).to_dict("records")
    dataset = PairedDataset(data, out, mode="counterpart")
    assert dataset.has_soft_labels
    classes = ["cat", "dog", "fox"]
    for row in rows:
        target = dataset.target_of(out / row["output"], classes.index(row["class_folder"]))
        expected = [row["soft_label"].get(cls, 0.0) for cls in classes]
        assert target.tolist() == pytest.approx(expected, abs=1e-7)
        assert float(target.sum()) == pytest.approx(1.0, abs=1e-6)


def test_the_report_shows_the_mode_and_each_strength(data: Path, tmp_path: Path) -> None:
    from diffcoremix.filter import FilterConfig, filter_run
    from diffcoremix.report import build_report

    out = tmp_path / "out"
    generate(data, out, PromptsConfig(per_image=4), _tiny("cross-class"))
    filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0))
    result = build_report(out, tmp_path / "report.html")
    assert "counterparts" in result.sections
    section = (
        (tmp_path / "report.html").read_text(encoding="utf-8").split('id="counterparts"')[1].split("</section>")[0]
    )
    assert "<td>mode</td><td>cross-class</td>" in section
    counts = read_manifest(out)["strength"].value_counts()
    for strength, count in counts.items():
        cells = f'<td class="num">{strength:g}</td><td class="num">{count}</td><td class="num">{count}</td>'
        assert cells in section  # each strength: its candidates, all generated


def test_each_record_is_checked_for_its_strength_even_without_the_settings_file(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), _tiny("img2img", strength=(0.5,)))
    (out / "settings.json").unlink()  # a damaged settings record: each candidate's own record still decides
    summary = generate(data, out, PromptsConfig(), _tiny("img2img", strength=(0.75,)))
    assert summary.generated == 5
    assert summary.skipped == 0
    assert set(read_manifest(out)["strength"]) == {0.75}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that ``finetune --preset tiny`` made (two steps of each stage: its components, not its quality)."""
    from diffcoremix.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("tuned")
    data = make_class_folders(root / "data", {"cat": 2, "dog": 2, "fox": 1})  # the images of the data fixture
    finetune(data, root / "model", FinetuneConfig(preset="tiny", max_steps=2, vae_steps=2, batch_size=2))
    return root / "model"


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "cross-class"])
def test_a_fine_tuned_generator_serves_every_mode_that_reuses_its_components(
    mode: str, data: Path, tmp_path: Path, tuned: Path
) -> None:
    model = tuned
    extra: dict[str, Any] = {}
    if mode == "inpaint":
        masks = tmp_path / "masks"
        for photo in data.rglob("*.png"):
            target = masks / photo.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 40), 255, np.uint8)).save(target)
        extra["masks"] = str(masks)
    out = tmp_path / "out"
    summary = generate(data, out, PromptsConfig(), GenerateConfig(preset="tiny", model=str(model), counterpart=mode,
                                                                  num_inference_steps=4, **extra))  # fmt: skip
    assert summary.generated == 5
    rows = read_manifest(out).to_dict("records")
    assert {r["model"] for r in rows} == {str(model)}
    assert all(r["finetune"] is not None and r["counterpart"] == mode for r in rows)


def test_an_out_folder_of_the_version_before_modes_resumes_without_redoing_anything(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), _tiny("text"))
    recorded = json.loads((out / "settings.json").read_text())
    del recorded["settings"]["counterpart"]  # what the version before counterpart modes and hard sources recorded
    for key in ("sources", "rank_by", "rank_by_sha256"):
        del recorded["prompts"][key]
    (out / "settings.json").write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    summary = generate(data, out, PromptsConfig(), _tiny("text"))
    assert summary.generated == 0
    assert summary.skipped == 5
    with pytest.raises(RunConflictError, match=r"settings\.counterpart: None -> "):
        generate(data, out, PromptsConfig(), _tiny("img2img"))  # another mode is another run


def test_presets_lists_every_mode_and_each_presets_edit_model(capsys: Any) -> None:
    done = run_in_process(capsys, "presets")
    assert done.returncode == 0
    for name in COUNTERPART_NAMES:
        assert re.search(rf"^  {re.escape(name)} +\S", done.stdout, re.MULTILINE), name
    assert "--counterpart edit: builtin:tiny-ip2p" in done.stdout
    assert "--counterpart edit: timbrooks/instruct-pix2pix" in done.stdout


def test_cross_class_draws_only_among_the_classes_the_plan_uses(data: Path) -> None:
    from diffcoremix.data.sources import DataConfig, usable_sources
    from diffcoremix.prompts import build_prompts

    counterpart = resolve_settings(_tiny("cross-class")).counterpart
    listing = usable_sources(data, DataConfig(classes=("cat", "fox"))).listing  # dog left out by --classes
    plan = build_prompts(listing, PromptsConfig(per_image=4), counterpart=counterpart)
    assert {(r.source_class_folder, r.target_class_folder) for r in plan} == {("cat", "fox"), ("fox", "cat")}
    assert {r.label for r in plan} == {0, 2}  # DATA's labels: cat 0, fox 2
    one = usable_sources(data, DataConfig(classes=("cat",))).listing
    with pytest.raises(ConfigError, match="two or more classes"):
        build_prompts(one, PromptsConfig(), counterpart=counterpart)
