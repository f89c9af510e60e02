"""``diffcoremix finetune``: the tiny model learns (VAE first, then every UNet weight), LoRA trains only adapters,
what it writes is what ``generate --model/--lora`` loads (a killed run: tests/test_faults_training.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffcoremix.cli.main import main
from diffcoremix.finetune import FinetuneConfig, finetune
from diffcoremix.finetune.loop import CHECKPOINT_FILE, LOSS_FILE, LOSS_PLOT
from diffcoremix.finetuned import FINETUNE_FILE, LORA_WEIGHTS
from diffcoremix.manifest.records import read_records

from .helpers import make_class_folders, run_in_process

# 2 VAE steps then 6 UNet steps of 4 images, a checkpoint every 2 steps: at 2 (mid-VAE), 4 (the VAE's end), 6
# (mid-UNet).
FAST = ("--preset", "tiny", "--vae-steps", "2", "--max-steps", "6", "--batch-size", "4", "--checkpointing-steps", "2")
FAST_CONFIG = FinetuneConfig(preset="tiny", vae_steps=2, max_steps=6, batch_size=4, checkpointing_steps=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("data") / "data", {"cat": 3, "dog": 3}, size=36)


@pytest.fixture(scope="module")
def full_model(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full fine-tune of the tiny model, uninterrupted (what the killed runs must equal)."""
    model = tmp_path_factory.mktemp("full") / "model"
    finetune(data, model, FAST_CONFIG)
    return model


def _weights(model: Path) -> dict[str, torch.Tensor]:
    files = {
        "unet": "unet/diffusion_pytorch_model.safetensors",
        "vae": "vae/diffusion_pytorch_model.safetensors",
        "text_encoder": "text_encoder/model.safetensors",
    }
    return {f"{part}.{k}": v for part, file in files.items() for k, v in load_file(model / file).items()}


def test_a_full_finetune_writes_a_model_that_generate_loads_with_its_provenance(
    data: Path, full_model: Path, tmp_path: Path
) -> None:
    info = json.loads((full_model / FINETUNE_FILE).read_text())
    assert info["method"] == "full"
    assert info["base_model"] == "builtin:tiny-sd-learnable"
    assert (info["images"], info["steps"], info["vae_steps"]) == (6, 6, 2)
    losses = [json.loads(line) for line in (full_model / LOSS_FILE).read_text().splitlines()]
    assert [line["stage"] for line in losses] == ["vae"] * 2 + ["unet"] * 6
    assert [line["step"] for line in losses] == list(range(8))
    assert (full_model / LOSS_PLOT).read_bytes().startswith(b"\x89PNG")
    assert not (full_model / CHECKPOINT_FILE).exists()
    from diffcoremix.generate.tiny import tiny_learnable_sd_pipeline

    start = tiny_learnable_sd_pipeline(32, seed=0)
    trained = load_file(full_model / "text_encoder" / "model.safetensors")
    initial = start.text_encoder.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)  # the text encoder learns too
    assert not torch.equal(_weights(full_model)["vae.encoder.conv_in.weight"], start.vae.encoder.conv_in.weight)
    vae_config = json.loads((full_model / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] != pytest.approx(0.18215)  # measured on the trained VAE's latents

    out = tmp_path / "out"
    assert main(["generate", str(data), "-o", str(out), "--preset", "tiny", "--model", str(full_model)]) == 0
    records = read_records(out)
    assert len(records) == 6
    assert all(r["status"] == "ok" for r in records)
    record = records[0]
    assert record["model"] == str(full_model)
    assert record["model_revision"] == info["weights_sha256"]
    assert record["finetune"]["data_sha256"] == info["data_sha256"]
    assert record["finetune"]["loss_sha256"] == info["loss_sha256"]
    assert record["finetune"]["steps"] == 6
    # the sampling settings of finetune.json fill what the command leaves unset (the preset says 64 px, 4 steps)
    assert (record["height"], record["width"], record["num_inference_steps"]) == (32, 32, 25)
    assert record["scheduler"] == "DDIMScheduler"
    from PIL import Image

    with Image.open(out / record["output"]) as image:
        assert image.size == (32, 32)


def test_a_finished_finetune_is_not_redone_and_other_settings_are_refused(
    data: Path, full_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stamp = (full_model / FINETUNE_FILE).stat().st_mtime_ns
    assert main(["finetune", str(data), "-o", str(full_model), *FAST]) == 0
    assert (full_model / FINETUNE_FILE).stat().st_mtime_ns == stamp
    assert main(["finetune", str(data), "-o", str(full_model), *FAST[:-2], "--checkpointing-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["finetune", str(data), "-o", str(full_model), *FAST, "--learning-rate", "0.01"]) == 2
    assert "other settings (learning_rate: 0.001 -> 0.01)" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["tiny", pytest.param("tiny-sdxl", marks=pytest.mark.slow)])
def test_lora_trains_only_adapters_and_round_trips_through_generate(data: Path, tmp_path: Path, preset: str) -> None:
    model = tmp_path / "lora"
    config = FinetuneConfig(
        preset=preset, method="lora", rank=2, max_steps=3, batch_size=4, learning_rate=1e-2, resolution=32
    )
    result = finetune(data, model, config)
    assert result.info["base_model"] == {"tiny": "builtin:tiny-sd", "tiny-sdxl": "builtin:tiny-sdxl"}[preset]
    assert not (model / "unet").exists()
    saved = load_file(model / LORA_WEIGHTS)
    assert saved
    assert all("lora" in key for key in saved)  # only adapter weights are saved: the base UNet stays as it was
    ups = [v for k, v in saved.items() if "lora.up" in k or "lora_B" in k]
    assert ups
    assert any(bool(v.abs().sum() > 0) for v in ups)  # B starts at zero: non-zero means the adapters trained

    plain, tuned = tmp_path / "plain", tmp_path / "tuned"
    base = ["generate", str(data), "--preset", preset, "--max-per-class", "1", "--height", "32", "--width", "32"]
    assert main([*base, "-o", str(plain)]) == 0
    assert main([*base, "-o", str(tuned), "--lora", str(model)]) == 0
    before = {r["key"]: r for r in read_records(plain)}
    after = {r["key"]: r for r in read_records(tuned)}
    assert before.keys() == after.keys()
    assert all(after[k]["seed"] == before[k]["seed"] for k in after)
    assert all(after[k]["output_sha256"] != before[k]["output_sha256"] for k in after)  # the adapters apply
    record = next(iter(after.values()))
    assert record["lora"] == str(model.resolve())
    assert record["finetune"]["method"] == "lora"
    assert record["settings_sha256"] != next(iter(before.values()))["settings_sha256"]


def test_bad_finetune_options_are_one_line_refusals_that_leave_model_unclaimed(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    assert (
        main(["finetune", str(data), "-o", str(model), "--preset", "tiny", "--method", "lora", "--vae-steps", "5"]) == 2
    )
    assert "--vae-steps" in capsys.readouterr().err
    assert main(["finetune", str(data), "-o", str(model), "--preset", "tiny", "--resolution", "20"]) == 2
    assert "--resolution" in capsys.readouterr().err
    full_sdxl = ["--preset", "tiny-sdxl", "--method", "full", "--train-text-encoder"]
    assert main(["finetune", str(data), "-o", str(model), *full_sdxl]) == 2
    assert "--train-text-encoder must be off for SDXL" in capsys.readouterr().err
    assert main(["finetune", str(data), "-o", str(data / "inside")]) == 2
    assert not model.exists()
    assert not (data / "inside").exists()


def test_lora_leaves_every_base_weight_frozen() -> None:
    from diffcoremix.finetune.config import resolve
    from diffcoremix.finetune.loop import _prepare_models
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    models = _prepare_models(pipe, resolve(FinetuneConfig(preset="tiny", method="lora", rank=2)), "cpu")
    trained = {id(p) for p in models.trainable}
    names = [n for n, p in pipe.unet.named_parameters() if id(p) in trained]
    assert names
    assert all("lora" in n for n in names)
    assert len(names) == sum(p.requires_grad for p in pipe.unet.parameters())
    for module in (pipe.text_encoder, pipe.vae):
        assert not any(p.requires_grad for p in module.parameters())


def test_lora_over_a_local_diffusers_folder_round_trips_through_generate(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny version of tests/test_fullsize.py's LoRA run: a user's own model folder, not a built-in preset."""
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    folder, lora = tmp_path / "my-model", tmp_path / "lora"
    tiny_sd_pipeline(0).save_pretrained(folder)
    trained = run_in_process(capsys, "finetune", data, "-o", lora, "--model", folder, "--method", "lora", "--max-steps",
                             "2", "--batch-size", "2", "--resolution", "32", "--learning-rate", "0.01")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert json.loads((lora / FINETUNE_FILE).read_text())["base_model"] == str(folder)
    base = ["generate", data, "--model", folder, "--max-per-class", "1", "--num-inference-steps", "2",
            "--height", "32", "--width", "32"]  # fmt: skip
    assert run_in_process(capsys, *base, "-o", tmp_path / "plain").returncode == 0
    assert run_in_process(capsys, *base, "-o", tmp_path / "tuned", "--lora", lora).returncode == 0
    plain = {r["key"]: r for r in read_records(tmp_path / "plain")}
    tuned = {r["key"]: r for r in read_records(tmp_path / "tuned")}
    assert plain.keys() == tuned.keys()
    assert all(tuned[k]["output_sha256"] != plain[k]["output_sha256"] for k in tuned)  # the adapters apply
    assert {r["lora"] for r in tuned.values()} == {str(lora.resolve())}
