"""``--counterpart inpaint`` on the tiny preset: the subject kept pixel for pixel, the background redrawn, the mask's
digest recorded, bad masks recorded as that candidate's failure, Grad-CAM masks from a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffcoremix.data.folder import list_images
from diffcoremix.generate import GenerateConfig, generate, read_manifest
from diffcoremix.masks import mask_sha256
from diffcoremix.modes import fit
from diffcoremix.prompts import PromptsConfig
from diffcoremix.train import TrainConfig, train

from .helpers import make_class_folders, run_in_process

SIZE = 32


def _tiny(**kwargs: Any) -> GenerateConfig:
    return GenerateConfig(**{"preset": "tiny", "num_inference_steps": 2, "height": SIZE, "width": SIZE,
                             "counterpart": "inpaint", **kwargs})  # fmt: skip


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", {"cat": 2, "dog": 1}, size=SIZE)


def _masks(tmp_path: Path, data: Path, make: Any) -> Path:
    """A mask folder with ``make(relpath)`` (a uint8 array) for every image of DATA."""
    folder = tmp_path / "masks"
    for item in list_images(data).items:
        (folder / item.relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make(item.relpath)).save(folder / item.relpath)
    return folder


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_a_subject_mask_over_the_whole_image_gives_back_the_source(data: Path, tmp_path: Path) -> None:
    masks = _masks(tmp_path, data, lambda _: np.full((SIZE, SIZE), 255, np.uint8))
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), _tiny(masks=str(masks)))
    rows = read_manifest(out).to_dict("records")
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == "ok"
        assert row["pipeline"] == "StableDiffusionInpaintPipeline"
        assert np.array_equal(_pixels(out / row["output"]), _pixels(data / row["source"]))
        assert row["mask_sha256"] == mask_sha256(Image.open(masks / row["source"]))


def test_the_subject_is_kept_and_the_background_redrawn(data: Path, tmp_path: Path) -> None:
    def left_half(_: str) -> np.ndarray:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:, : SIZE // 2] = 255
        return mask

    masks = _masks(tmp_path, data, left_half)
    out = tmp_path / "out"
    generate(data, out, PromptsConfig(), _tiny(masks=str(masks)))
    for row in read_manifest(out).to_dict("records"):
        made, source = _pixels(out / row["output"]), _pixels(data / row["source"])
        assert np.array_equal(made[:, : SIZE // 2], source[:, : SIZE // 2])  # the subject, pixel for pixel
        assert np.abs(made[:, SIZE // 2 :] - source[:, SIZE // 2 :]).mean() > 10  # the background, redrawn


def test_bad_masks_are_recorded_as_their_candidates_failures(data: Path, tmp_path: Path) -> None:
    masks = _masks(tmp_path, data, lambda _: np.full((SIZE, SIZE), 255, np.uint8))
    (masks / "cat" / "img_000.png").unlink()  # missing
    Image.fromarray(np.full((SIZE, SIZE + 8), 255, np.uint8)).save(masks / "cat" / "img_001.png")  # wrong size
    Image.fromarray(np.full((SIZE, SIZE), 128, np.uint8)).save(masks / "dog" / "img_000.png")  # not binary
    out = tmp_path / "out"
    summary = generate(data, out, PromptsConfig(), _tiny(masks=str(masks)))
    assert summary.failed == 3
    assert summary.generated == 0
    errors = {r["source"]: r["error"] for r in read_manifest(out).to_dict("records")}
    assert errors["cat/img_000.png"].startswith("MaskError: no mask for cat/img_000.png")
    assert "40x32" in errors["cat/img_001.png"]
    assert "32x32" in errors["cat/img_001.png"]
    assert "not binary" in errors["dog/img_000.png"]


def test_a_missing_mask_folder_is_one_line_before_anything_is_made(data: Path, tmp_path: Path, capsys: Any) -> None:
    done = run_in_process(capsys, "generate", str(data), "-o", str(tmp_path / "out"), "--preset", "tiny",
                          "--counterpart", "inpaint", "--masks", str(tmp_path / "nowhere"))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--masks" in done.stderr
    assert "nowhere" in done.stderr
    assert not list((tmp_path / "out").rglob("*.png"))


@pytest.mark.shared_data
def test_grad_cam_masks_of_a_trained_run_keep_each_subject(shared_data: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for item in list_images(shared_data / "cifar10" / "train").subset(["cat", "ship"], 6).items:
        (photos / item.class_folder).mkdir(parents=True, exist_ok=True)
        (photos / item.relpath).symlink_to(item.path.resolve())
    run = tmp_path / "run"
    train(photos, config=TrainConfig(model="resnet20", batch_size=6, img_size=32, max_steps=20), output=run)
    out = tmp_path / "out"
    generate(photos, out, PromptsConfig(), _tiny(mask_from=str(run)))
    rows = [r for r in read_manifest(out).to_dict("records") if r["status"] == "ok"]
    assert rows, "no source got a Grad-CAM mask"
    from diffcoremix.train.cam_masks import gradcam_masks

    masks = gradcam_masks(run, photos)
    for row in rows:
        source = Image.open(photos / row["source"]).convert("RGB")
        mask = masks.subject_mask(row["source"], source.size)
        assert row["mask_sha256"] == mask_sha256(mask)
        subject = np.asarray(fit(mask, SIZE, SIZE, Image.Resampling.NEAREST)) == 255
        made, kept = _pixels(out / row["output"]), np.asarray(fit(source, SIZE, SIZE), dtype=np.int16)
        assert np.array_equal(made[subject], kept[subject])
