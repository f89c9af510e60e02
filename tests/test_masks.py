"""Subject masks of the ``inpaint`` counterpart mode: a mask folder's files are found at their image's relative path
or with ``.png`` in place of its extension, and a missing, wrongly sized or non-binary mask is a MaskError that
names the files, sizes or values; a mask's digest follows its pixels; Grad-CAM masks of a run trained here on real
photos are binary, of the photo's size, deterministic, neither empty nor full, grow as the threshold falls, and are
named by the run's weights."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffcoremix.data.folder import list_images
from diffcoremix.data.images import open_image
from diffcoremix.digests import file_sha256
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.masks import MaskError, folder_masks, mask_sha256
from diffcoremix.train import TrainConfig, train
from diffcoremix.train.cam_masks import gradcam_masks
from diffcoremix.train.models import create_model
from diffcoremix.train.run import MODEL_FILE, RunError

from .helpers import make_class_folders

CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")


def _subject(size: tuple[int, int]) -> np.ndarray:
    """A 0/255 mask of ``size`` (width, height): a rectangle of subject in the middle."""
    width, height = size
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 255
    return pixels


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """DATA with a JPEG photo (a/photo.jpg, 40x30) and PNGs (a/img_000.png, b/img_000.png, 40x40)."""
    root = make_class_folders(tmp_path / "data", {"a": 1, "b": 1}, size=40)
    pixels = np.random.default_rng(1).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "a" / "photo.jpg", quality=95)
    return root


def _mask_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "masks"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    return folder


def test_a_mask_is_found_at_its_images_relative_path_or_with_png_for_its_extension(data: Path, tmp_path: Path) -> None:
    folder = _mask_dir(tmp_path)
    Image.fromarray(_subject((40, 30))).save(folder / "a" / "photo.png")  # photo.jpg's mask, as PNG
    Image.fromarray(_subject((40, 40))).convert("1").save(folder / "a" / "img_000.png")  # mode 1, same path
    Image.fromarray(_subject((40, 40)) // 255).save(folder / "b" / "img_000.png")  # a 0/1 label map
    before = _snapshot(folder)
    masks = folder_masks(folder, data)
    assert masks.identity == f"masks:{folder.resolve()}"
    photo = masks.subject_mask("a/photo.jpg", open_image(data / "a" / "photo.jpg").size)
    assert (photo.mode, photo.size) == ("L", (40, 30))
    np.testing.assert_array_equal(np.asarray(photo), _subject((40, 30)))
    for source in ("a/img_000.png", "b/img_000.png"):  # mode 1 and 0/1 values: both read as 0 and 255
        mask = masks.subject_mask(source, (40, 40))
        assert mask.mode == "L"
        np.testing.assert_array_equal(np.asarray(mask), _subject((40, 40)))
    assert _snapshot(folder) == before  # DIR is only read


def test_a_mask_at_the_exact_relative_path_is_taken_before_the_png_one(data: Path, tmp_path: Path) -> None:
    folder = _mask_dir(tmp_path)
    exact = _subject((40, 30))
    Image.fromarray(exact).save(folder / "a" / "photo.jpg", format="PNG")  # a PNG under the photo's own name
    Image.fromarray(255 - exact).save(folder / "a" / "photo.png")
    mask = folder_masks(folder, data).subject_mask("a/photo.jpg", (40, 30))
    np.testing.assert_array_equal(np.asarray(mask), exact)


def test_a_missing_mask_names_the_paths_looked_for(data: Path, tmp_path: Path) -> None:
    folder = _mask_dir(tmp_path)
    with pytest.raises(MaskError) as caught:
        folder_masks(folder, data).subject_mask("a/photo.jpg", (40, 30))
    message = str(caught.value)
    assert message.startswith(f"no mask for a/photo.jpg in {folder}")
    assert str(folder / "a" / "photo.jpg") in message
    assert str(folder / "a" / "photo.png") in message


def test_a_mask_of_another_size_names_both_sizes(data: Path, tmp_path: Path) -> None:
    folder = _mask_dir(tmp_path)
    Image.fromarray(_subject((30, 40))).save(folder / "a" / "photo.png")  # turned: 30x40 for a 40x30 photo
    with pytest.raises(MaskError, match=r"photo\.png is 30x40 but its image a/photo\.jpg is 40x30"):
        folder_masks(folder, data).subject_mask("a/photo.jpg", (40, 30))


def test_a_mask_that_is_not_binary_names_its_values(data: Path, tmp_path: Path) -> None:
    folder = _mask_dir(tmp_path)
    soft = _subject((40, 40))
    soft[0, :3] = (1, 128, 254)  # an anti-aliased edge
    Image.fromarray(soft).save(folder / "a" / "img_000.png")
    Image.fromarray(_subject((40, 30))).save(folder / "a" / "photo.jpg", quality=75)  # a JPEG mask: blurred edges
    masks = folder_masks(folder, data)
    with pytest.raises(MaskError, match=r"img_000\.png is not binary: it holds 5 values \(0, 1, 128, 254, 255\)"):
        masks.subject_mask("a/img_000.png", (40, 40))
    with pytest.raises(MaskError, match=r"photo\.jpg is not binary: .* save masks as PNG"):
        masks.subject_mask("a/photo.jpg", (40, 30))


def test_an_unreadable_mask_is_a_mask_error(data: Path, tmp_path: Path) -> None:
    folder = _mask_dir(tmp_path)
    (folder / "a" / "photo.png").write_bytes(b"not an image")
    with pytest.raises(MaskError, match=r"the mask of a/photo\.jpg cannot be read: .*photo\.png"):
        folder_masks(folder, data).subject_mask("a/photo.jpg", (40, 30))


def test_a_mask_folder_that_is_missing_or_inside_data_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="masks must be an existing folder"):
        folder_masks(tmp_path / "nowhere", data)
    (data / "masks").mkdir()
    for inside in (data, data / "masks", data / "a"):
        with pytest.raises(ConfigError, match="masks must be a folder outside DATA"):
            folder_masks(inside, data)


def test_the_mask_digest_follows_mode_size_and_every_pixel() -> None:
    pixels = _subject((16, 8))
    mask = Image.fromarray(pixels)
    assert mask_sha256(mask) == mask_sha256(Image.fromarray(pixels.copy()))
    flipped = pixels.copy()
    flipped[7, 15] = 255 - flipped[7, 15]  # one corner pixel
    assert mask_sha256(Image.fromarray(flipped)) != mask_sha256(mask)
    assert mask_sha256(Image.fromarray(pixels.reshape(16, 8))) != mask_sha256(mask)  # same bytes, other size
    assert mask_sha256(mask.convert("1")) != mask_sha256(mask)


# --- Grad-CAM masks -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA of links to the first 4 real photos of 3 CUB classes (non-square, about 256 px)."""
    root = tmp_path_factory.mktemp("cub") / "data"
    for item in list_images(shared_data / "cub200_25").subset(CUB_CLASSES, 4).items:
        (root / item.class_folder).mkdir(parents=True, exist_ok=True)
        (root / item.relpath).symlink_to(item.path.resolve())
    return root


@pytest.fixture(scope="module")
def run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained here by `train` on the photos (ResNet-20 at 32 px, 20 steps: 3 s; after 2 steps, it sees no
    evidence of two of the three classes anywhere in their photos)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(photos, config=TrainConfig(model="resnet20", batch_size=6, img_size=32, max_steps=20), output=out)
    return out


def _share(mask: Image.Image) -> float:
    return float((np.asarray(mask) == 255).mean())


@pytest.mark.shared_data
def test_grad_cam_masks_are_binary_of_the_photos_size_and_neither_empty_nor_full(photos: Path, run: Path) -> None:
    masks, shares, skipped = gradcam_masks(run, photos), [], []
    for item in list_images(photos).items:
        size = open_image(item.path).size
        try:
            mask = masks.subject_mask(item.relpath, size)
        except MaskError as err:  # a weak run may see no evidence of the class anywhere: a skip, never a full mask
            skipped.append(str(err))
            continue
        assert size[0] != size[1]
        assert (mask.mode, mask.size) == ("L", size)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        shares.append(_share(mask))
    assert len(shares) >= 8, shares  # of 12 photos
    assert all("the map is 0 everywhere" in message for message in skipped), skipped
    assert all(0 < share < 1 for share in shares), shares


@pytest.mark.shared_data
def test_grad_cam_masks_are_deterministic_and_grow_as_the_threshold_falls(photos: Path, run: Path) -> None:
    masks = {t: gradcam_masks(run, photos, t) for t in (0.8, 0.5, 0.2)}
    again = gradcam_masks(run, photos, 0.5)
    grown = 0
    for item in list_images(photos).items[3::4]:  # one photo of each class, and one more
        size = open_image(item.path).size
        try:
            made = {t: np.asarray(source.subject_mask(item.relpath, size)) for t, source in masks.items()}
        except MaskError:
            continue
        assert mask_sha256(again.subject_mask(item.relpath, size)) == mask_sha256(Image.fromarray(made[0.5]))
        assert mask_sha256(masks[0.5].subject_mask(item.relpath, size)) == mask_sha256(Image.fromarray(made[0.5]))
        # a lower threshold keeps every pixel of a higher one
        assert not np.any((made[0.8] == 255) & (made[0.5] == 0))
        assert not np.any((made[0.5] == 255) & (made[0.2] == 0))
        grown += (made[0.8] == 255).sum() < (made[0.5] == 255).sum() < (made[0.2] == 255).sum()
    assert grown >= 2


@pytest.mark.shared_data
def test_grad_cam_masks_are_the_same_under_a_callers_no_grad_or_inference_mode(photos: Path, run: Path) -> None:
    """A generation loop runs under ``no_grad`` or ``inference_mode``; Grad-CAM needs gradients all the same."""
    item = list_images(photos).items[3]
    size = open_image(item.path).size
    expected = mask_sha256(gradcam_masks(run, photos).subject_mask(item.relpath, size))
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert mask_sha256(gradcam_masks(run, photos).subject_mask(item.relpath, size)) == expected


def test_a_grad_cam_map_that_is_0_everywhere_is_a_mask_error_not_a_full_mask(tmp_path: Path) -> None:
    """A run whose classifier weighs no feature (a zero last layer): no pixel is evidence of any class."""
    data = make_class_folders(tmp_path / "data", {"a": 1, "b": 1}, size=40)
    model = create_model("resnet20", 2)
    with torch.no_grad():
        model.linear.weight.zero_()
    (tmp_path / "run").mkdir()
    info = {"model": "resnet20", "classes": ["a", "b"], "img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
            "transform": "cifar", "method": "none", "partners": None, "seed": 0}  # fmt: skip
    torch.save({"info": info, "state_dict": model.state_dict()}, tmp_path / "run" / MODEL_FILE)
    with pytest.raises(MaskError, match=r"no Grad-CAM mask for a/img_000\.png: .* \(the map is 0 everywhere\)"):
        gradcam_masks(tmp_path / "run", data).subject_mask("a/img_000.png", (40, 40))


@pytest.mark.shared_data
def test_the_grad_cam_identity_names_the_runs_weights_and_the_threshold(
    photos: Path, run: Path, tmp_path: Path
) -> None:
    first = gradcam_masks(run, photos, 0.5).identity
    assert first == f"gradcam:{run.resolve()}@{file_sha256(run / MODEL_FILE)}:0.5"
    assert gradcam_masks(run, photos, 0.5).identity == first
    assert gradcam_masks(run, photos, 0.4).identity != first
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert gradcam_masks(copy, photos, 0.5).identity.split("@")[1] == first.split("@")[1]  # same weights
    saved = torch.load(copy / MODEL_FILE, weights_only=True)
    saved["state_dict"]["linear.bias"][0] += 1.0  # "retrained": one weight differs
    torch.save(saved, copy / MODEL_FILE)
    assert gradcam_masks(copy, photos, 0.5).identity.split("@")[1] != first.split("@")[1]


@pytest.mark.shared_data
def test_grad_cam_masks_refuse_a_bad_threshold_an_unknown_class_and_an_unfinished_run(
    photos: Path, run: Path, tmp_path: Path
) -> None:
    for threshold in (0.0, 1.0, -0.5, 1.5, math.nan):
        with pytest.raises(ConfigError, match=r"mask_threshold must be in \(0, 1\)"):
            gradcam_masks(run, photos, threshold)
    with pytest.raises(DatasetError, match=r"class folder 'zebra' of .* is not a class of the run"):
        gradcam_masks(run, photos, classes=[CUB_CLASSES[0], "zebra"])
    masks = gradcam_masks(run, photos, classes=CUB_CLASSES)
    with pytest.raises(DatasetError, match=r"class folder 'zebra'"):
        masks.subject_mask("zebra/photo.jpg", (40, 30))
    with pytest.raises(
        MaskError, match=r"no Grad-CAM mask for 001\.Black_footed_Albatross/gone\.jpg: .*gone\.jpg: file not found"
    ):
        masks.subject_mask(f"{CUB_CLASSES[0]}/gone.jpg", (40, 30))
    with pytest.raises(RunError, match="not a finished training run"):
        gradcam_masks(tmp_path, photos)
