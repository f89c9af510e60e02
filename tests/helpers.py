"""Helpers shared by the tests: where the real photographs are, the real CLI in a subprocess, tiny datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$DIFFCOREMIX_SHARED_DATA``, else the first ``shared/data`` beside the repository or one of its parents."""
    if "DIFFCOREMIX_SHARED_DATA" in os.environ:
        return Path(os.environ["DIFFCOREMIX_SHARED_DATA"])
    for parent in REPO.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return REPO.parent / "shared" / "data"


def cli_command(*args: str | os.PathLike[str], prefix: tuple[str, ...] = ()) -> list[str]:
    """The argv of ``python -m diffcoremix ARGS``."""
    return [*prefix, sys.executable, "-m", "diffcoremix", *map(str, args)]


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m diffcoremix ARGS`` as a real subprocess (optionally under a wrapper command)."""
    command = cli_command(*args, prefix=prefix)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def run_in_process(capsys: Any, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """:func:`run_cli` in this process (``capsys`` is pytest's fixture): the same parser, messages and exit status,
    without the seconds of a new interpreter importing torch. For commands that change no process-wide state that
    other tests rely on."""
    from diffcoremix.cli.main import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([str(a) for a in args], code, captured.out, captured.err)


NUMERIC_ENV_PREFIXES = ("OPENBLAS_", "MKL_", "OMP_", "DNNL_", "ONEDNN_", "ATEN_")
"""Variables that choose a numeric library's kernels (``OPENBLAS_CORETYPE=Haswell`` on an AVX-512 machine, say)."""


def numeric_env() -> dict[str, str]:
    """This process's numeric-library variables: a subprocess given a minimal environment must keep them, else its
    float results differ from this process's in the last bits (OpenBLAS picks other kernels)."""
    return {k: v for k, v in os.environ.items() if k.startswith(NUMERIC_ENV_PREFIXES)}


def make_class_folders(root: Path, counts: dict[str, int], size: int = 40) -> Path:
    """Write ``counts[folder]`` small distinct PNGs into each class folder of ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"img_{i:03d}.png")
    return root


def kill_when_lines(command: list[str], path: Path, lines: int, *, timeout: float = 240) -> None:
    """Start ``command``, SIGKILL it as soon as ``path`` holds ``lines`` lines, and wait for it to die."""
    import signal
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not (path.is_file() and path.read_text().count("\n") >= lines):
            assert process.poll() is None, f"{command[3]} ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def save_tiny_hf_clip(folder: Path) -> Path:
    """A transformers ``CLIPModel`` at tiny size (seeded), its image processor and the offline CLIP tokenizer,
    saved in ``folder`` as a hub model would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from diffcoremix.generate.tiny import clip_tokenizer
    from diffcoremix.seeds import seeded_init

    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 49407}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    with seeded_init(0):
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    return folder


def save_tiny_checked_sd(folder: Path, *, flag_all: bool) -> Path:
    """The tiny SD pipeline (``--preset tiny``'s weights) with a real ``StableDiffusionSafetyChecker`` at tiny size and
    its ``CLIPImageProcessor``, saved in ``folder`` in the hub layout (as ``runwayml/stable-diffusion-v1-5`` ships one).

    The checker flags an image when its embedding's cosine with a concept embedding exceeds that concept's threshold
    (``concept_embeds_weights``): a cosine lies in [-1, 1], so thresholds of -2 flag every image and 2 flag none.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from diffcoremix.generate.tiny import tiny_sd_pipeline
    from diffcoremix.seeds import seeded_init

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    # the checker uses the vision tower only; its text config must still name token ids inside its vocabulary
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 1, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}  # fmt: skip
    with seeded_init(0):
        checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0 if flag_all else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    base = tiny_sd_pipeline(0).components
    pipe = StableDiffusionPipeline(
        **{k: v for k, v in base.items() if k not in ("safety_checker", "feature_extractor", "image_encoder")},
        safety_checker=checker,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    )
    pipe.save_pretrained(folder)
    return folder
