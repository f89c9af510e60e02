"""What names a model names its weights (issue 26, item 3): a local generator folder whose weights changed is a run
with other settings, and so is a fine-tuning of a local base that changed; an open_clip weights file or a
transformers CLIP folder (``pytorch_model.bin`` alone) whose weights changed gets new embedding cache entries, never
the old ones; the digest of a folder is read once and remembered by file status (shown by the files a process opens,
seen by an audit hook), read again after a touch or a rewrite, and a damaged record of it is rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcoremix.embedders import load_embedder
from diffcoremix.embedders.cache import EmbeddingCache, embed_files
from diffcoremix.generate import GenerateConfig, read_manifest, resolve_settings
from diffcoremix.identities import cache_path, weights_sha256

from .helpers import make_class_folders, run_in_process, save_tiny_hf_clip

FAST = ("--preset", "tiny", "--num-inference-steps", "1")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A digest cache of this test's own (``XDG_CACHE_HOME``), for this process and the ones it starts."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def _settle(*paths: Path, ago: float = 100.0) -> None:
    """Date every file below ``paths`` ``ago`` seconds back: older than a write still in progress could be."""
    when = time.time() - ago
    for path in paths:
        for file in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.utime(file, (when, when), follow_symlinks=False)


_OPENS = """
import json, os, sys
root = os.path.realpath(sys.argv[2])
opened = []
def watch(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.startswith(root + os.sep):
            opened.append(os.path.relpath(path, root))
sys.addaudithook(watch)
from diffcoremix.identities import weights_sha256
print(json.dumps({"digest": weights_sha256(sys.argv[1]), "opened": sorted(opened)}))
"""
"""Prints the digest of ``argv[1]`` and the files below the folder ``argv[2]`` that the process opened."""


def _digest_in_new_process(path: Path, root: Path) -> tuple[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", _OPENS, str(path), str(root)], capture_output=True, text=True,
                            env=os.environ.copy(), timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    return answer["digest"], answer["opened"]


def test_a_folders_digest_is_read_once_and_again_after_a_touch_a_rewrite_or_a_damaged_cache(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "text").mkdir()
    (folder / ".git").mkdir()
    (folder / "unet" / "weights.safetensors").write_bytes(b"u" * 1000)
    (folder / "text" / "model.bin").write_bytes(b"t" * 500)
    (folder / "model_index.json").write_text("{}")
    (folder / ".git" / "copy.bin").write_bytes(b"hidden")  # a hidden folder is no part of the model
    _settle(folder)
    digest, opened = _digest_in_new_process(folder, folder)
    assert opened == ["text/model.bin", "unet/weights.safetensors"]
    assert digest == weights_sha256(folder)
    assert _digest_in_new_process(folder, folder) == (digest, [])  # remembered: nothing read
    link = tmp_path / "link"
    link.symlink_to(folder)
    assert _digest_in_new_process(link, folder) == (digest, [])  # the same files, by another path
    os.utime(folder / "unet" / "weights.safetensors")  # touched: read again, the same digest
    _settle(folder / "unet")
    assert _digest_in_new_process(folder, folder) == (digest, ["unet/weights.safetensors"])
    # Rewritten with its size and modification time kept (as `cp -p` of another file of one size would): its
    # change time tells, and the digest is new.
    file = folder / "text" / "model.bin"
    times = file.stat()
    file.write_bytes(b"T" * 500)
    os.utime(file, ns=(times.st_atime_ns, times.st_mtime_ns))
    changed, opened = _digest_in_new_process(folder, folder)
    assert (opened, changed != digest) == (["text/model.bin"], True)
    cache_path().write_text("{ damaged")
    assert _digest_in_new_process(folder, folder) == (changed, ["text/model.bin", "unet/weights.safetensors"])
    assert json.loads(cache_path().read_text())["format"] == 1  # rebuilt
    assert _digest_in_new_process(folder, folder) == (changed, [])


def test_a_file_just_written_is_not_remembered(tmp_path: Path) -> None:
    file = tmp_path / "weights" / "fresh.safetensors"
    file.parent.mkdir()
    file.write_bytes(b"x" * 100)  # its times may not yet show a write to come within the clock's tick
    # "Just" written, however slowly the processes below start on a loaded machine: modified a minute from now
    future = time.time_ns() + 60 * 10**9
    os.utime(file, ns=(future, future))
    assert _digest_in_new_process(file, file.parent) == (weights_sha256(file), ["fresh.safetensors"])
    assert _digest_in_new_process(file, file.parent)[1] == ["fresh.safetensors"]


def test_local_model_lora_and_vae_are_named_by_their_weights_whatever_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    model, vae, lora = tmp_path / "model", tmp_path / "vae", tmp_path / "lora.safetensors"
    for folder, content in ((model, b"m"), (vae, b"v")):
        folder.mkdir()
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(content * 64)
    lora.write_bytes(b"l" * 64)
    settings = resolve_settings(GenerateConfig(preset="tiny", model=str(model), vae=str(vae), lora=str(lora)))
    assert settings.weights_sha256 == {"model": weights_sha256(model), "lora": hashlib.sha256(b"l" * 64).hexdigest(),
                                       "vae": weights_sha256(vae)}  # fmt: skip
    (tmp_path / "elsewhere").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = resolve_settings(GenerateConfig(preset="tiny", model="model", vae="./vae", lora="lora.safetensors"))
    assert again.weights_sha256 == settings.weights_sha256
    (model / "diffusion_pytorch_model.safetensors").write_bytes(b"M" * 64)
    assert (
        resolve_settings(GenerateConfig(preset="tiny", model=str(model))).weights_sha256["model"]
        != (settings.weights_sha256["model"])
    )
    # A hub id (and the built-in model) is named by its id and revision: no digest.
    assert resolve_settings(GenerateConfig(preset="sd15")).weights_sha256 == {}
    assert resolve_settings(GenerateConfig(preset="tiny")).weights_sha256 == {}


def test_a_generator_folder_with_changed_weights_is_a_run_with_other_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    data = make_class_folders(tmp_path / "data", {"001.cat": 1, "002.dog": 1})
    folder, out = tmp_path / "my-model", tmp_path / "out"
    tiny_sd_pipeline(0).save_pretrained(folder)
    args = ("generate", data, "-o", out, *FAST, "--model", folder)
    assert run_in_process(capsys, *args).returncode == 0
    first, made_with = read_manifest(out), weights_sha256(folder)
    assert run_in_process(capsys, *args).returncode == 0  # the same weights: all done already
    assert read_manifest(out).equals(first)
    tiny_sd_pipeline(1).save_pretrained(folder)  # other weights, in the same folder
    refused = run_in_process(capsys, *args)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "holds a run made with other settings (settings.weights_sha256: {'model': " in refused.stderr
    assert read_manifest(out).equals(first)  # nothing made, nothing lost
    assert run_in_process(capsys, *args, "--overwrite").returncode == 0
    second = read_manifest(out)
    assert list(second.output_sha256) != list(first.output_sha256)  # made again, by the new weights
    # Every record names the weights it was made with.
    assert list(first.model_sha256) == [made_with] * 2
    assert list(first.weights_sha256) == [{"model": made_with}] * 2
    assert list(second.model_sha256) == [weights_sha256(folder)] * 2 != list(first.model_sha256)


def test_a_finetune_whose_local_base_weights_changed_is_a_run_with_other_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    data = make_class_folders(tmp_path / "data", {"001.cat": 2})
    base = tmp_path / "base"
    tiny_sd_pipeline(0).save_pretrained(base)
    args = ("finetune", data, "-o", tmp_path / "model", "--preset", "tiny", "--model", base, "--max-steps", "2",
            "--resolution", "32")  # fmt: skip
    assert run_in_process(capsys, *args).returncode == 0
    tiny_sd_pipeline(1).save_pretrained(base)  # another base, in the same folder
    refused = run_in_process(capsys, *args)
    assert refused.returncode == 2, refused.stderr
    assert "holds a fine-tuning run with other settings (model_sha256: " in refused.stderr.splitlines()[-1]


def _tiny_open_clip_file(path: Path, seed: int) -> Path:
    from diffcoremix.embedders.models import tiny_open_clip

    torch.save(tiny_open_clip(seed).module.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_open_clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An open_clip model config of :func:`tiny_open_clip`'s architecture, added to open_clip's table of models."""
    import open_clip

    config = {"embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "head_width": 16, "patch_size": 8,
              "image_size": 64}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4,
              "layers": 2}}  # fmt: skip
    file = tmp_path_factory.mktemp("open_clip") / "diffcoremix-identity-tiny.json"
    file.write_text(json.dumps(config))
    open_clip.add_model_config(file)
    return file.stem


def _embed_twice(spec: str, images: list[Path], root: Path) -> tuple[str, np.ndarray, tuple[int, int]]:
    """The embedder's id, its embeddings of ``images`` through the cache at ``root``, and the cache's (hits,
    misses) over a first and a second pass (the second all hits)."""
    embedder = load_embedder(spec)
    cache = EmbeddingCache(root, embedder.id)
    vectors = embed_files(embedder, images, cache)
    assert np.array_equal(embed_files(embedder, images, cache), vectors)
    return embedder.id, vectors, (cache.hits, cache.misses)


def test_changed_weights_of_an_open_clip_file_never_reuse_cached_embeddings(
    tiny_open_clip_name: str, tmp_path: Path
) -> None:
    images = sorted(make_class_folders(tmp_path / "data", {"001.cat": 3}).rglob("*.png"))
    weights = _tiny_open_clip_file(tmp_path / "open_clip_model.bin", seed=0)
    spec = f"open_clip:{tiny_open_clip_name}:{weights}"
    old_id, old, counts = _embed_twice(spec, images, tmp_path / "cache")
    assert counts == (3, 3)
    _tiny_open_clip_file(weights, seed=1)
    new_id, new, counts = _embed_twice(spec, images, tmp_path / "cache")
    assert counts == (3, 3)  # computed afresh, then read
    assert not np.allclose(new, old)
    assert np.allclose(new, embed_files(load_embedder(spec), images), atol=1e-6)  # as without a cache
    assert new_id == f"open_clip:{tiny_open_clip_name}:{weights_sha256(weights)[:16]}" != old_id


def test_changed_weights_of_a_transformers_clip_folder_of_pytorch_model_bin_never_reuse_cached_embeddings(
    tmp_path: Path,
) -> None:
    from safetensors.torch import load_file

    images = sorted(make_class_folders(tmp_path / "data", {"001.cat": 3}).rglob("*.png"))
    folder = save_tiny_hf_clip(tmp_path / "clip")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # the older format alone, as many hub folders hold it
    old_id, old, counts = _embed_twice(f"hf:{folder}", images, tmp_path / "cache")
    assert counts == (3, 3)
    torch.save({k: v + 0.05 if k.startswith("vision_model.") else v for k, v in state.items()},
               folder / "pytorch_model.bin")  # fmt: skip
    new_id, new, counts = _embed_twice(f"hf:{folder}", images, tmp_path / "cache")
    assert counts == (3, 3)
    assert not np.allclose(new, old)
    assert new_id == f"hf-clip:{weights_sha256(folder)[:16]}" != old_id


def test_a_transformers_clip_from_the_hub_is_named_by_its_id_and_its_cached_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from diffcoremix.embedders.models import _hf_identity

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--diffcoremix-test--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # the hub cache this test laid out
    assert _hf_identity("diffcoremix-test/tiny-clip") == f"diffcoremix-test/tiny-clip@{commit}"
    assert _hf_identity("diffcoremix-test/not-cached") == "diffcoremix-test/not-cached"
