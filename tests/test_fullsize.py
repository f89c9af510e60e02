"""The real-model path at real size: SD 1.5's published architecture and CLIP ViT-B/32, random weights, local files.

A user with downloaded weights gives the tool a diffusers folder or an original single-file checkpoint, and CLIP
weights as a transformers folder or an open_clip file. The tiny models of the other test modules run the same code
paths; here the shapes, key names and file sizes are the real ones (an 860 M-parameter UNet, a 123 M-parameter
text encoder, a ViT-B/32 image tower), written the way the hub and the original checkpoints write them, and
driven through the command line in real subprocesses. Weights are saved in float16 (as the hub's fp16 files and
most single-file downloads are) and computed in float32 on the CPU, at 64 px and 2 steps.

About 5 GB of memory, 5 GB of disk and a few minutes on two CPU cores: slow, so in ``make test-all`` only.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from .helpers import make_class_folders, run_cli
from .singlefile import save_sd_checkpoint

pytestmark = pytest.mark.slow

SAMPLING = ("--num-inference-steps", "2", "--height", "64", "--width", "64", "--batch-size", "2", "-q")
OFFLINE = {"HF_HUB_OFFLINE": "1"}  # nothing may be fetched: every model here is a local file


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("fullsize")
    yield folder
    shutil.rmtree(folder)  # 5 GB of weights: not left for pytest's last three temporary folders to keep


@pytest.fixture(scope="module")
def data(root: Path) -> Path:
    return make_class_folders(root / "data", {"001.cat": 1, "002.dog": 1}, size=64)


@pytest.fixture(scope="module")
def sd15(root: Path) -> tuple[Path, Path]:
    """SD 1.5 in the hub's folder layout and as an original single-file checkpoint, with the same weights."""
    import torch

    from diffcoremix.generate.fullsize import random_sd15_pipeline

    pipe = random_sd15_pipeline(0).to(dtype=torch.float16)
    assert sum(p.numel() for p in pipe.unet.parameters()) == 859_520_964
    folder, checkpoint = root / "stable-diffusion-v1-5", root / "v1-5-pruned-emaonly-fp16.safetensors"
    pipe.save_pretrained(folder)
    save_sd_checkpoint(pipe, checkpoint)
    del pipe
    gc.collect()
    return folder, checkpoint


@pytest.fixture(scope="module")
def hf_clip(root: Path) -> Path:
    """transformers' CLIPModel at ViT-B/32 size (its default configuration), processor and tokenizer, saved."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from diffcoremix.generate.tiny import clip_tokenizer
    from diffcoremix.seeds import seeded_init

    folder = root / "clip-vit-base-patch32"
    with seeded_init(0):
        model = CLIPModel(CLIPConfig())
    assert model.config.vision_config.patch_size == 32
    assert model.config.projection_dim == 512
    model.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def open_clip_file(root: Path) -> Path:
    """open_clip's ViT-B-32 with random weights, saved as the single weights file that open_clip reads."""
    import open_clip
    from safetensors.torch import save_file

    from diffcoremix.seeds import seeded_init

    with seeded_init(1):
        model = open_clip.create_model("ViT-B-32")
    path = root / "open_clip_vit_b_32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def _records(out: Path) -> list[dict[str, object]]:
    from diffcoremix.manifest.records import read_records

    return sorted(read_records(out), key=lambda r: str(r["key"]))


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def from_folder(sd15: tuple[Path, Path], data: Path, root: Path) -> Path:
    out = root / "from-folder"
    _ok(run_cli("generate", data, "-o", out, "--model", sd15[0], *SAMPLING, env=OFFLINE))
    return out


def test_generate_from_the_hub_layout_folder(from_folder: Path) -> None:
    records = _records(from_folder)
    assert len(records) == 2
    assert {r["pipeline"] for r in records} == {"StableDiffusionPipeline"}
    assert all(Image.open(from_folder / str(r["output"])).size == (64, 64) for r in records)


def test_the_single_file_makes_the_folders_bytes(
    sd15: tuple[Path, Path], data: Path, root: Path, from_folder: Path
) -> None:
    out = root / "from-file"
    folder, checkpoint = sd15
    _ok(run_cli("generate", data, "-o", out, "--model", checkpoint, "--model-config", folder, *SAMPLING, env=OFFLINE))
    assert [r["output_sha256"] for r in _records(out)] == [r["output_sha256"] for r in _records(from_folder)]


@pytest.mark.parametrize("embedder", ["hf", "open_clip"])
def test_augment_with_a_local_clip_embedder(
    embedder: str, sd15: tuple[Path, Path], data: Path, root: Path, request: pytest.FixtureRequest
) -> None:
    spec = (f"hf:{request.getfixturevalue('hf_clip')}" if embedder == "hf"
            else f"open_clip:ViT-B-32:{request.getfixturevalue('open_clip_file')}")  # fmt: skip
    out = root / f"augment-{embedder}"
    _ok(run_cli("augment", data, "-o", out, "--model", sd15[0], "--embedder", spec, "--threshold", "-1", *SAMPLING,
                env=OFFLINE))  # fmt: skip
    kept = sorted(p.name for p in (out / "train").rglob("*.png"))
    assert len(kept) == 2, kept  # threshold -1 keeps every candidate: each was embedded and compared


@pytest.fixture(scope="module")
def lora(sd15: tuple[Path, Path], data: Path, root: Path) -> Path:
    out = root / "lora"
    _ok(run_cli("finetune", data, "-o", out, "--model", sd15[0], "--method", "lora", "--max-steps", "2",
                "--batch-size", "2", "--resolution", "64", "--learning-rate", "0.01", "-q", env=OFFLINE))  # fmt: skip
    return out


def test_finetune_lora_then_generate_with_it(
    lora: Path, sd15: tuple[Path, Path], data: Path, root: Path, from_folder: Path
) -> None:
    info = json.loads((lora / "finetune.json").read_text())
    assert info["method"] == "lora"
    assert not (lora / "unet").exists()  # adapters only: the 3.4 GB base UNet is not copied
    out = root / "with-lora"
    _ok(run_cli("generate", data, "-o", out, "--model", sd15[0], "--lora", lora, *SAMPLING, env=OFFLINE))
    tuned, plain = _records(out), _records(from_folder)
    assert [r["seed"] for r in tuned] == [r["seed"] for r in plain]
    assert all(t["output_sha256"] != p["output_sha256"] for t, p in zip(tuned, plain, strict=True))
    assert {r["lora"] for r in tuned} == {str(lora.resolve())}


def test_finetune_lora_from_the_single_file(sd15: tuple[Path, Path], data: Path, root: Path) -> None:
    folder, checkpoint = sd15
    out = root / "lora-from-file"
    _ok(run_cli("finetune", data, "-o", out, "--model", checkpoint, "--model-config", folder, "--method", "lora",
                "--max-steps", "1", "--batch-size", "2", "--resolution", "64", "-q", env=OFFLINE))  # fmt: skip
    assert json.loads((out / "finetune.json").read_text())["method"] == "lora"


def test_a_lora_file_given_as_the_model_is_one_line_naming_lora(
    lora: Path, sd15: tuple[Path, Path], data: Path, root: Path
) -> None:
    from diffcoremix.finetuned import LORA_WEIGHTS

    result = run_cli("generate", data, "-o", root / "lora-as-model", "--model", lora / LORA_WEIGHTS, "--model-config",
                     sd15[0], *SAMPLING, env=OFFLINE)  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "--lora" in lines[0]
