"""Loading a user's own model (issue 26, items 2, 5, 6): a local ``--model`` fetches nothing (a preset's hub VAE
stays with the preset's hub model), ``finetune`` loads what ``generate`` loads (``--vae``, ``--model-config``,
single files), every loading failure is one line naming its fix, no option is read as an abbreviation of
another, and ``-q`` leaves stderr empty.

Every model is a tiny real one saved as users' files are: diffusers folders (``save_pretrained``), an original
(LDM) single-file checkpoint without a VAE (:mod:`tests.singlefile`), a VAE as one ``.safetensors`` file, a peft
LoRA saved by diffusers, a truncated copy of a weights file.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffcoremix.generate import GenerateConfig
from diffcoremix.generate.config import resolve_settings
from diffcoremix.generate.presets import GENERATOR_PRESETS

from .helpers import make_class_folders, run_cli, run_in_process, save_tiny_hf_clip
from .singlefile import save_checkpoint_without_vae
from .test_offline import offline_env, one_line, watched_cli

ONE_STEP = ("--num-inference-steps", "1", "--height", "32", "--width", "32")
HUB_VAE = "madebyollin/sdxl-vae-fp16-fix"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("data") / "data", {"cat": 1, "dog": 1}, size=36)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SD and SDXL folders, an SD checkpoint file without a VAE, the VAE as one file, a LoRA file."""
    import diffusers
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from diffcoremix.generate.backend import quiet_loading  # the writers' bars off
    from diffcoremix.generate.tiny import tiny_sd_pipeline, tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("models")
    sd = tiny_sd_pipeline(0)
    with quiet_loading():
        sd.save_pretrained(root / "sd")
        tiny_sdxl_pipeline(0).save_pretrained(root / "sdxl")
    save_checkpoint_without_vae(sd, root / "no-vae.safetensors")
    save_file({k: v.contiguous() for k, v in sd.vae.state_dict().items()}, root / "vae.safetensors")
    sd.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(sd.unet))
    diffusers.StableDiffusionPipeline.save_lora_weights(root / "lora", unet_lora_layers=layers)
    return {
        "sd": root / "sd",
        "sdxl": root / "sdxl",
        "no_vae": root / "no-vae.safetensors",
        "vae_file": root / "vae.safetensors",
        "lora": root / "lora" / "pytorch_lora_weights.safetensors",
    }


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs with the hub declared out of reach (a local model must not need it anyway)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _settings(out: Path) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads((out / "settings.json").read_text())["settings"]
    return settings


def _ok(out: Path) -> list[str]:
    from diffcoremix.generate import read_manifest

    return list(read_manifest(out).status)


# --- item 2: a local --model never fetches anything ----------------------------------------------------------------


def test_vae_none_on_the_command_line_is_the_models_own_vae_not_unset() -> None:
    from diffcoremix.cli.main import build_parser
    from diffcoremix.cli.options import config_from_args
    from diffcoremix.finetune.config import FinetuneConfig

    for words, expected in ((["--vae", "none"], None), ([], HUB_VAE)):
        args = build_parser().parse_args(["generate", "DATA", "-o", "OUT", "--preset", "sdxl", *words])
        assert resolve_settings(config_from_args(GenerateConfig, args, "generate")).vae == expected
    args = build_parser().parse_args(["finetune", "DATA", "-o", "MODEL", "--preset", "sdxl", "--vae", "none"])
    assert config_from_args(FinetuneConfig, args, "finetune").vae == "none"


def test_the_sdxl_presets_hub_vae_stays_with_their_hub_models() -> None:
    for name in ("sdxl", "sdxl-turbo", "paper"):
        preset = GENERATOR_PRESETS.get(name)
        local = resolve_settings(GenerateConfig(preset=name, model="/data/my-sdxl", device="cpu"))
        assert local.vae is None, name  # the model's own VAE
        named = resolve_settings(GenerateConfig(preset=name, model="/data/my-sdxl", vae="/data/vae", device="cpu"))
        assert named.vae == "/data/vae"
        if preset.model is not None:
            own = resolve_settings(GenerateConfig(preset=name, device="cpu"))
            assert own.vae == preset.vae
            assert resolve_settings(GenerateConfig(preset=name, vae="none", device="cpu")).vae is None


def test_preset_sdxl_over_a_local_folder_opens_no_connection_and_uses_its_own_vae(
    data: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {**offline_env(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ("generate", data, "-o", out, "--preset", "sdxl", "--model", models["sdxl"], *ONE_STEP)
    result, connections = watched_cli(*args, env=env, log=tmp_path / "connections")
    assert result.returncode == 0, result.stderr
    assert connections == []  # not even the probe of the hub
    assert _ok(out) == ["ok", "ok"]
    settings = _settings(out)
    assert (settings["model"], settings["vae"]) == (str(models["sdxl"]), None)
    assert HUB_VAE not in (out / "settings.json").read_text()


def test_vae_none_and_a_vae_folder_over_a_local_sdxl_model(
    data: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], offline: None
) -> None:
    base = ("generate", data, "--preset", "sdxl", "--model", models["sdxl"], *ONE_STEP)
    result = run_in_process(capsys, *base, "-o", tmp_path / "none", "--vae", "none")
    assert result.returncode == 0, result.stderr
    assert _settings(tmp_path / "none")["vae"] is None
    result = run_in_process(capsys, *base, "-o", tmp_path / "folder", "--vae", models["sdxl"] / "vae")
    assert result.returncode == 0, result.stderr
    assert _settings(tmp_path / "folder")["vae"] == str(models["sdxl"] / "vae")
    assert _ok(tmp_path / "folder") == ["ok", "ok"]


def test_finetune_takes_a_single_file_with_model_config_and_vae_and_generate_lora_loads_its_base(
    data: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], offline: None
) -> None:
    lora = tmp_path / "lora"
    base = ("--preset", "tiny", "--model", models["no_vae"], "--model-config", models["sd"])
    result = run_in_process(capsys, "finetune", data, "-o", lora, *base, "--vae", models["sd"] / "vae",
                            "--method", "lora", "--max-steps", "2", "--batch-size", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = json.loads((lora / "finetune.json").read_text())
    assert (info["base_model"], info["base_model_config"]) == (str(models["no_vae"]), str(models["sd"]))
    assert info["base_vae"] == str(models["sd"] / "vae")
    # generate --lora alone loads the same base: the file, its configs and the VAE it was trained over
    out = tmp_path / "out"
    result = run_in_process(capsys, "generate", data, "-o", out, "--lora", lora, *ONE_STEP)
    assert result.returncode == 0, result.stderr
    assert _ok(out) == ["ok", "ok"]
    assert (_settings(out)["model_config"], _settings(out)["vae"]) == (str(models["sd"]), str(models["sd"] / "vae"))


@pytest.mark.parametrize(
    "args",
    [
        ("finetune", "{data}", "-o", "{out}", "--preset", "tiny", "--vae-step", "2"),
        ("generate", "{data}", "-o", "{out}", "--preset", "tiny", "--num-inference", "1"),
        ("prompts", "{data}", "-o", "{out}", "--frac", "0.5"),
    ],
)
def test_an_abbreviated_option_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    argv = [a.format(data=data, out=tmp_path / "out") for a in args]
    result = run_in_process(capsys, *argv)
    assert result.returncode == 2
    assert f"unrecognized arguments: {argv[-2]}" in result.stderr
    assert not (tmp_path / "out").exists()


# --- item 5: every loading failure is one line that names the fix -------------------------------------------------


def _error(capsys: pytest.CaptureFixture[str], *args: Any) -> str:
    result = run_in_process(capsys, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_checkpoint_without_a_vae_names_vae_and_runs_with_it_as_a_folder_or_a_file(
    data: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], offline: None
) -> None:
    base = ("generate", data, "--preset", "tiny", "--model", models["no_vae"], "--model-config", models["sd"])
    line = _error(capsys, *base, "-o", tmp_path / "bare", *ONE_STEP)
    assert f"the single file {models['no_vae']} has no VAE baked in: pass one with --vae" in line
    assert not (tmp_path / "bare").exists()
    for name, vae in (("folder", models["sd"] / "vae"), ("file", models["vae_file"])):
        result = run_in_process(capsys, *base, "--vae", vae, "-o", tmp_path / name, *ONE_STEP)
        assert result.returncode == 0, result.stderr
        assert _ok(tmp_path / name) == ["ok", "ok"]


def test_a_lora_file_given_as_model_is_told_to_use_lora(
    data: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], offline: None
) -> None:
    lora = models["lora"]
    line = _error(capsys, "generate", data, "-o", tmp_path / "out", "--preset", "tiny", "--model", lora,
                  "--model-config", models["sd"], *ONE_STEP)  # fmt: skip
    assert f"the single file {lora} holds LoRA weights, not a whole model: pass it as --lora {lora}" in line
    line = _error(capsys, "generate", data, "-o", tmp_path / "out", "--preset", "tiny", "--model", lora.parent,
                  *ONE_STEP)  # fmt: skip
    assert f"{lora.parent} holds LoRA weights, not a whole model: pass it as --lora {lora.parent}" in line
    result = run_in_process(capsys, "generate", data, "-o", tmp_path / "out", "--preset", "tiny", "--model",
                            models["sd"], "--lora", lora, *ONE_STEP)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_damaged_local_weights_are_not_answered_with_network_advice(
    data: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], offline: None
) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(models["no_vae"].read_bytes()[:4096])  # a download cut short
    folder = tmp_path / "sd"
    shutil.copytree(models["sd"], folder)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:-100])
    for args in (("--model", cut, "--model-config", models["sd"]), ("--model", folder)):
        line = _error(capsys, "generate", data, "-o", tmp_path / "out", "--preset", "tiny", *args, *ONE_STEP)
        assert "its files are damaged or incomplete" in line
        assert "network" not in line
        assert "--preset tiny" not in line


class _NotAHub(http.server.BaseHTTPRequestHandler):
    """What a proxy or captive portal says to every request: an HTML page with a 404."""

    def _answer(self) -> None:
        body = b"<html><body><h1>Not Found</h1>blocked by the company proxy</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _answer  # noqa: N815 (http.server's names)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def not_a_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_answers_but_not_as_a_hub_is_named_so(data: Path, tmp_path: Path, not_a_hub: str) -> None:
    env = {**offline_env(tmp_path / "hf"), "HF_ENDPOINT": not_a_hub}
    line = one_line(run_cli("generate", data, "-o", tmp_path / "out", env=env))  # the default preset: a hub model
    assert "cannot load model 'stable-diffusion-v1-5/stable-diffusion-v1-5' (" in line
    assert f"the hub {not_a_hub} answered, but not as a Hugging Face hub (HTTP 404, text/html)" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # 12 s; the generator case stays in make test
@pytest.mark.parametrize("embedder", ["open_clip:ViT-B-32:openai", "hf:org/clip"])
def test_an_embedder_from_an_endpoint_that_is_not_a_hub_is_named_so(
    data: Path, tmp_path: Path, not_a_hub: str, embedder: str
) -> None:
    env = {**offline_env(tmp_path / "hf"), "HF_ENDPOINT": not_a_hub}
    args = ("prompts", data, "-o", tmp_path / "p.jsonl", "--context", "sample", "--context-embedder", embedder)
    line = one_line(run_cli(*args, env=env))
    assert f"the hub {not_a_hub} answered, but not as a Hugging Face hub (HTTP 404, text/html)" in line


# --- item 6: -q hides every progress bar ----------------------------------------------------------------------------


@pytest.mark.slow  # 14 s of subprocesses; test_quiet_switches_off_the_hubs_download_bars is the fast check
def test_quiet_leaves_stderr_empty_while_transformers_loads_a_clip(data: Path, tmp_path: Path) -> None:
    clip = save_tiny_hf_clip(tmp_path / "clip")
    args = ("prompts", data, "--context", "sample", "--context-embedder", f"hf:{clip}")
    result = run_cli(*args, "-o", tmp_path / "p.jsonl", "-q", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (tmp_path / "p.jsonl").read_text().count("\n") == 2
    # the loading bar is the library's, never ours to show: off without -q too (as generate's pipeline loads)
    result = run_cli(*args, "-o", tmp_path / "again.jsonl", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "Loading weights" not in result.stderr


def test_quiet_switches_off_the_hubs_download_bars(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, enable_progress_bars

    hub_tqdm = sys.modules["huggingface_hub.utils.tqdm"]  # the module (huggingface_hub.utils.tqdm is also a class)

    # An earlier command run in this process with -q may have switched the bars off (and huggingface_hub, imported
    # then, read the variable as set): start from bars on, and leave them so
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)  # as read at import: not set
    enable_progress_bars()
    try:
        assert not are_progress_bars_disabled()
        assert run_in_process(capsys, "prompts", data, "-o", tmp_path / "p.jsonl", "-q").returncode == 0
        assert are_progress_bars_disabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # for a huggingface_hub imported later
    finally:
        enable_progress_bars()
