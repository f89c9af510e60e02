"""Generation on the tiny presets (the real diffusers pipeline classes): plan, manifest, determinism, resume, shards."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffcoremix import PromptsConfig, build_prompts
from diffcoremix.generate import (
    COLUMNS,
    GENERATOR_PRESETS,
    DiffusersGenerator,
    GenerateConfig,
    GenerationError,
    RunConflictError,
    generate,
    read_manifest,
    resolve_settings,
    resolve_shard,
)
from diffcoremix.manifest import shard_path

from .helpers import cli_command, kill_when_lines, make_class_folders, run_cli, run_in_process

FAST = ("--preset", "tiny", "--num-inference-steps", "2")
VOLATILE = ["seconds"]  # wall time: the only field allowed to differ between equal runs


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", {"001.Black_footed_Albatross": 2, "002.Laysan_Albatross": 3})


def _tiny(**kwargs: Any) -> GenerateConfig:
    return GenerateConfig(**{"preset": "tiny", "num_inference_steps": 2, **kwargs})


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _stable(table: pd.DataFrame) -> list[dict[str, Any]]:
    return table.drop(columns=VOLATILE).to_dict(orient="records")  # type: ignore[no-any-return]


def _pixels(out: Path, relpath: str) -> np.ndarray:
    return np.asarray(Image.open(out / relpath), dtype=np.int16)


def test_cli_manifest_has_exactly_the_planned_candidates(data: Path, tmp_path: Path) -> None:
    before = _snapshot(data)
    out = tmp_path / "out"
    result = run_cli("generate", data, "-o", out, *FAST, "--per-image", "2", "--pack", "birds", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "10 generated, 0 already done, 0 failed" in result.stdout

    plan = build_prompts(data, PromptsConfig(pack="birds", per_image=2, seed=3))
    table = read_manifest(out)
    assert list(table.columns) == list(COLUMNS)
    assert table.key.tolist() == [r.key for r in plan.records]
    assert table.prompt.tolist() == [r.prompt for r in plan.records]
    assert table.seed.tolist() == [r.seed for r in plan.records]
    assert (table.status == "ok").all()
    assert table.error.isna().all()
    for row in table.itertuples():
        image = out / row.output
        assert hashlib.sha256(image.read_bytes()).hexdigest() == row.output_sha256
        assert hashlib.sha256((data / row.source).read_bytes()).hexdigest() == row.source_sha256
        assert Image.open(image).size == (64, 64)
        assert row.output == f"images/{row.source}.k{row.k}.png"
    row = table.iloc[0]
    assert (row.model, row.pipeline, row.scheduler) == ("builtin:tiny-sd", "StableDiffusionPipeline", "DDIMScheduler")
    settings = [row[c] for c in ("num_inference_steps", "guidance_scale", "height", "dtype", "device")]
    assert settings == [2, 5.0, 64, "float32", "cpu"]
    # The output is itself a class-folder dataset; the resolved config and versions are saved; DATA is untouched.
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in data.iterdir())
    config = (out / "config.yaml").read_text()
    assert "num_inference_steps: 2" in config
    assert "# torch: 2." in config
    assert _snapshot(data) == before
    # Readable without diffcoremix, too.
    direct = pd.read_json(shard_path(out, 0, 1), lines=True)
    assert direct.key.tolist() == table.key.tolist()


def test_same_seed_same_bytes(data: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate(data, tmp_path / name, PromptsConfig(seed=seed), _tiny())
        runs[name] = read_manifest(tmp_path / name)
    assert runs["a"].output_sha256.tolist() == runs["b"].output_sha256.tolist()
    for row in runs["a"].itertuples():
        assert (tmp_path / "a" / row.output).read_bytes() == (tmp_path / "b" / row.output).read_bytes()
    assert set(runs["a"].output_sha256).isdisjoint(set(runs["c"].output_sha256))


def test_batch_size_does_not_change_the_images(data: Path, tmp_path: Path) -> None:
    # Each image has its own CPU generator, so it depends on its seed only. Batched convolutions may round
    # differently in float32; the stated tolerance is 2/255 per pixel after 8-bit quantisation.
    generate(data, tmp_path / "b1", PromptsConfig(per_image=2), _tiny(batch_size=1))
    generate(data, tmp_path / "b4", PromptsConfig(per_image=2), _tiny(batch_size=4))
    one, four = read_manifest(tmp_path / "b1"), read_manifest(tmp_path / "b4")
    assert one.key.tolist() == four.key.tolist()
    worst = max(
        int(np.abs(_pixels(tmp_path / "b1", o) - _pixels(tmp_path / "b4", f)).max())
        for o, f in zip(one.output, four.output, strict=True)
    )
    assert worst <= 2
    # ...while different seeds give clearly different images.
    assert np.abs(_pixels(tmp_path / "b1", one.output[0]) - _pixels(tmp_path / "b1", one.output[1])).mean() > 5


def test_sdxl_family_runs(data: Path, tmp_path: Path) -> None:
    summary = generate(data, tmp_path / "xl", PromptsConfig(fraction=0.5), _tiny(preset="tiny-sdxl"))
    table = read_manifest(tmp_path / "xl")
    assert summary.generated == len(table) == 3  # half of 2 and of 3 images, rounded half up
    assert (table.pipeline == "StableDiffusionXLPipeline").all()
    assert all(Image.open(tmp_path / "xl" / p).size == (64, 64) for p in table.output)


def test_scheduler_by_name_with_kwargs(data: Path, tmp_path: Path) -> None:
    config = _tiny(scheduler="EulerDiscreteScheduler", scheduler_kwargs={"timestep_spacing": "trailing"})
    generate(data, tmp_path / "euler", PromptsConfig(fraction=0.5), config)
    assert set(read_manifest(tmp_path / "euler").scheduler) == {"EulerDiscreteScheduler"}


@pytest.mark.slow  # the kill harness (tests/test_faults_*.py) kills generation at every write phase: make test-all
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"a": 4, "b": 4, "c": 4})
    args = ("generate", data, *FAST, "--per-image", "4", "--batch-size", "2")
    reference = tmp_path / "reference"
    generate(data, reference, PromptsConfig(per_image=4), _tiny(batch_size=2))

    out = tmp_path / "out"
    manifest = shard_path(out, 0, 1)
    kill_when_lines(cli_command(*args, "-o", out), manifest, 8)  # two batches: each a "writing" and a final record
    written = manifest.read_text().count("\n")
    assert 8 <= written < 96, "the kill landed mid-run"

    result = run_cli(*args, "-o", out)
    assert result.returncode == 0, result.stderr
    done = int(result.stdout.split(" already done")[0].split(", ")[-1])
    assert done >= 4
    assert _stable(read_manifest(out)) == _stable(read_manifest(reference))
    for relpath in read_manifest(out).output:
        assert (out / relpath).read_bytes() == (reference / relpath).read_bytes()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert manifest.read_text().count("\n") == 48  # compacted: one record per candidate


def test_a_torn_record_is_redone_and_a_damaged_image_is_kept_until_moved_away(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), _tiny())
    reference = read_manifest(out)
    manifest = shard_path(out, 0, 1)
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # torn last record
    damaged = out / reference.output[0]
    damaged.write_bytes(b"\x89PNG damaged")  # no longer what was recorded: not ours to replace any more
    summary = generate(data, out, PromptsConfig(), _tiny())
    assert (summary.generated, summary.failed, summary.skipped) == (1, 1, 3)
    assert damaged.read_bytes() == b"\x89PNG damaged"
    assert read_manifest(out).status.tolist() == ["blocked", "ok", "ok", "ok", "ok"]
    damaged.unlink()  # moved away, as the warning says: the rerun makes it again
    assert generate(data, out, PromptsConfig(), _tiny()).generated == 1
    assert _stable(read_manifest(out)) == _stable(reference)


def test_a_source_photo_replaced_in_data_is_noticed_and_its_candidates_made_again(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    prompts = PromptsConfig(per_image=2)
    generate(data, out, prompts, _tiny())
    before = read_manifest(out).set_index("key")
    source = data / "002.Laysan_Albatross" / "img_001.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(source)  # another photo under the same name
    with caplog.at_level("WARNING", logger="diffcoremix"):
        summary = generate(data, out, prompts, _tiny())
    assert (summary.generated, summary.skipped) == (2, 8)
    assert "2 candidate(s) made from a source image that has changed" in caplog.text
    after = read_manifest(out).set_index("key")
    mine = after.source == "002.Laysan_Albatross/img_001.png"
    assert set(after.source_sha256[mine]) == {hashlib.sha256(source.read_bytes()).hexdigest()}
    assert (after.source_sha256[~mine] == before.source_sha256[~mine]).all()
    assert generate(data, out, prompts, _tiny()).generated == 0  # and then it is current


class FailingFor:
    """Fault injection around the real tiny generator: raises for chosen seeds, as a broken model would.

    Making the real pipeline fail on one prompt of a batch is not possible on purpose; this wrapper keeps the
    real ImageGenerator interface and the real images for every other seed.
    """

    def __init__(self, inner: DiffusersGenerator, bad_seeds: set[int]) -> None:
        self.inner = inner
        self.bad_seeds = bad_seeds
        self.provenance = inner.provenance

    def generate(self, prompts: Any, negative_prompts: Any, seeds: Any) -> list[Image.Image]:
        if self.bad_seeds & set(seeds):
            raise RuntimeError("injected failure")
        return self.inner.generate(prompts, negative_prompts, seeds)


def test_a_failing_candidate_is_recorded_and_the_run_goes_on(data: Path, tmp_path: Path) -> None:
    config = _tiny(batch_size=4)
    real = DiffusersGenerator.from_settings(resolve_settings(config))
    bad = build_prompts(data, PromptsConfig()).records[1]
    out = tmp_path / "out"
    summary = generate(data, out, PromptsConfig(), config, generator=FailingFor(real, {bad.seed}))
    assert (summary.generated, summary.failed) == (4, 1)
    table = read_manifest(out).set_index("key")
    assert table.loc[bad.key, "status"] == "error"
    assert table.loc[bad.key, "error"] == "RuntimeError: injected failure"
    assert table.output.isna().sum() == 1
    # A rerun retries only the failed candidate.
    again = generate(data, out, PromptsConfig(), config, generator=real)
    assert (again.generated, again.skipped, again.failed) == (1, 4, 0)
    assert (read_manifest(out).status == "ok").all()


def test_on_error_stop_records_then_raises(data: Path, tmp_path: Path) -> None:
    config = _tiny(batch_size=1, on_error="stop")
    real = DiffusersGenerator.from_settings(resolve_settings(config))
    bad = build_prompts(data, PromptsConfig()).records[0]
    with pytest.raises(GenerationError, match="injected failure"):
        generate(data, tmp_path / "out", PromptsConfig(), config, generator=FailingFor(real, {bad.seed}))
    records = [json.loads(line) for line in shard_path(tmp_path / "out", 0, 1).read_text().splitlines()]
    assert [(r["key"], r["status"]) for r in records] == [(bad.key, "error")]


def test_two_shards_together_equal_one_run(data: Path, tmp_path: Path) -> None:
    prompts = PromptsConfig(per_image=2)
    generate(data, tmp_path / "single", prompts, _tiny())
    sizes = {}
    for rank in (1, 0):  # in any order, into one shared folder
        sizes[rank] = generate(data, tmp_path / "sharded", prompts, _tiny(rank=rank, world_size=2)).shard
    assert sizes == {0: 6, 1: 4}  # shards take whole batches of 4: candidates 0-3 and 8-9, and 4-7
    single, sharded = read_manifest(tmp_path / "single"), read_manifest(tmp_path / "sharded")
    assert sharded.key.tolist() == single.key.tolist()
    assert sharded.output_sha256.tolist() == single.output_sha256.tolist()
    assert sorted(sharded["rank"].unique()) == [0, 1]
    assert len(list((tmp_path / "sharded" / "manifest").glob("*.jsonl"))) == 2


def test_shard_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_shard(None, None) == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_shard(None, None) == (2, 3)
    assert resolve_shard(0, None) == (0, 3)
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="rank must be in"):
        resolve_shard(None, None)


def test_changed_settings_in_the_same_folder_are_refused(data: Path, tmp_path: Path) -> None:
    generate(data, tmp_path / "out", PromptsConfig(), _tiny())
    with pytest.raises(RunConflictError, match=r"settings.guidance_scale: 5.0 -> 7.0"):
        generate(data, tmp_path / "out", PromptsConfig(), _tiny(guidance_scale=7.0))
    # batch size and shard layout do not change the images: allowed
    assert generate(data, tmp_path / "out", PromptsConfig(), _tiny(batch_size=3)).skipped == 5


def test_pyarrow_table(data: Path, tmp_path: Path) -> None:
    generate(data, tmp_path / "out", PromptsConfig(fraction=0.5), _tiny())
    table = read_manifest(tmp_path / "out", backend="pyarrow")
    assert table.num_rows == 3
    assert table.column_names == list(COLUMNS)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("--preset", "sd15"),
            {"HF_HUB_OFFLINE": "1"},
            "error: cannot load model 'stable-diffusion-v1-5/stable-diffusion-v1-5' (",
        ),
        (("--preset", "paper"), {}, "error: preset 'paper' has no downloadable model: pass --model PATH"),
        (("--model", "no/such/model.safetensors"), {}, "error: no/such/model.safetensors does not exist (a local"),
        (("--batch-size", "0"), {}, "error: --batch-size must be >= 1, got 0"),
        (("--height", "30"), {}, "error: --height must be a multiple of 8, >= 8, got 30"),
        (
            ("--preset", "nope"),
            {},
            "error: --preset must be one of paper, sd15, sd15-random, sd21, sdxl, sdxl-random, sdxl-turbo, tiny",
        ),
        (("--dtype", "float16", "--device", "cpu"), {}, "error: --dtype must be float32 or bfloat16 on a CPU"),
    ],
)
def test_bad_models_and_options_fail_in_one_line(
    data: Path, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run_cli("generate", data, "-o", tmp_path / "out", *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    if "cannot load" in message:
        assert "--preset tiny" in lines[0]
        assert "--model PATH" in lines[0]


def test_output_inside_the_dataset_is_refused(data: Path) -> None:
    result = run_cli("generate", data, "-o", data / "generated", *FAST)
    assert result.returncode == 2
    assert "diffcoremix never writes into DATA" in result.stderr
    assert not (data / "generated").exists()


def test_tiny_weights_are_seeded_and_leave_the_global_generator_alone() -> None:
    import torch

    from diffcoremix.generate.tiny import clip_tokenizer, tiny_sd_pipeline

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny_sd_pipeline(0), tiny_sd_pipeline(0), tiny_sd_pipeline(1)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    wa, wb, wc = (p.unet.conv_in.weight for p in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    # The offline tokenizer is CLIP's: same ids as OpenAI's for a known phrase (start, "a", "photo", "of", ...).
    ids = clip_tokenizer()("a photo of a bird").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 3329, 49407]


@pytest.mark.parametrize("name", GENERATOR_PRESETS.names())
def test_every_preset_resolves_to_valid_settings(name: str) -> None:
    import diffusers

    preset = GENERATOR_PRESETS.get(name)
    settings = resolve_settings(GenerateConfig(preset=name, device="cpu"))
    assert settings.height % 8 == 0
    assert settings.width % 8 == 0
    assert settings.num_inference_steps >= 1
    assert preset.description
    if settings.scheduler is not None:
        getattr(diffusers, settings.scheduler)(**settings.scheduler_kwargs)  # the class exists and takes the kwargs
    # user values win over the preset's
    assert resolve_settings(GenerateConfig(preset=name, device="cpu", height=72)).height == 72


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd15-random", "sdxl-random"])
def test_full_size_random_architectures_run(name: str, tmp_path: Path) -> None:
    from diffcoremix.generate.fullsize import random_sd15_pipeline, random_sdxl_pipeline

    build = random_sd15_pipeline if name == "sd15-random" else random_sdxl_pipeline
    pipe = build(0)
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    assert unet_params == (859_520_964 if name == "sd15-random" else 2_567_463_684)
    settings = dataclasses.replace(
        resolve_settings(GenerateConfig(preset=name, device="cpu")), num_inference_steps=1, height=64, width=64
    )
    images = DiffusersGenerator(pipe, settings, {}).generate(["a bird"], [""], [0])
    assert images[0].size == (64, 64)


def test_a_local_diffusers_folder_loads_offline(data: Path, tmp_path: Path) -> None:
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    folder = tmp_path / "my-model"
    tiny_sd_pipeline(0).save_pretrained(folder)
    out = tmp_path / "out"
    result = run_cli("generate", data, "-o", out, *FAST, "--model", folder, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    table = read_manifest(out)
    assert set(table.model) == {str(folder)}
    assert set(table.pipeline) == {"StableDiffusionPipeline"}
    # The same weights as the built-in preset: the saved-and-reloaded pipeline makes the same pixels.
    generate(data, tmp_path / "builtin", PromptsConfig(), _tiny())
    builtin = read_manifest(tmp_path / "builtin")
    worst = max(
        int(np.abs(_pixels(out, a) - _pixels(tmp_path / "builtin", b)).max())
        for a, b in zip(table.output, builtin.output, strict=True)
    )
    assert worst <= 2


def test_a_single_file_checkpoint_with_its_folders_configs_makes_the_folders_bytes(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    from .singlefile import save_sd_checkpoint

    pipe = tiny_sd_pipeline(0)
    folder = tmp_path / "my-model"
    pipe.save_pretrained(folder)
    checkpoint = save_sd_checkpoint(pipe, tmp_path / "my-model.safetensors")
    args = (*FAST, "--max-per-class", "1")
    assert run_in_process(capsys, "generate", data, "-o", tmp_path / "a", "--model", folder, *args).returncode == 0
    result = run_in_process(capsys, "generate", data, "-o", tmp_path / "b", "--model", checkpoint,
                            "--model-config", folder, *args)  # fmt: skip
    assert result.returncode == 0, result.stderr
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert len(a) == 2
    assert list(a.output_sha256) == list(b.output_sha256)  # the same weights, read from either form
    assert set(b.model_sha256) == {hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
