"""Class-folder listings: ImageFolder order, nesting, hidden and non-image entries, links, and the Dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from diffcoremix.data import ClassFolderDataset, DatasetListing, Finding, ImageItem, list_images
from diffcoremix.errors import DatasetError, ImageReadError


def write_image(path: Path, size: tuple[int, int] = (8, 6), colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def found(listing: DatasetListing) -> list[tuple[str, int]]:
    return [(item.relpath, item.label) for item in listing.items]


def findings(entries: tuple[Finding, ...]) -> set[tuple[str, str]]:
    return {(f.relpath, f.kind) for f in entries}


# --- agreement with torchvision's ImageFolder -----------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("subset", "num_classes", "num_images"),
    [("cub200_25", 25, 411), ("flowers102/train", 102, 1020), ("cifar10/train", 10, 1000)],
)
def test_real_datasets_list_like_image_folder(
    shared_data: Path, subset: str, num_classes: int, num_images: int
) -> None:
    root = str(shared_data / subset)
    listing = list_images(root)
    reference = ImageFolder(root)

    assert len(listing.classes) == num_classes
    assert len(listing) == num_images
    assert list(listing.classes) == reference.classes
    assert [(str(i.path), i.label) for i in listing.items] == reference.samples
    assert listing.problems == ()
    assert listing.ignored == ()


@pytest.mark.shared_data
def test_cub_listing_details(shared_data: Path) -> None:
    listing = list_images(shared_data / "cub200_25")
    assert listing.classes[0] == "001.Black_footed_Albatross"
    first = listing.items[0]
    assert first.label == 0
    assert first.class_folder == "001.Black_footed_Albatross"
    assert first.relpath.startswith("001.Black_footed_Albatross/")
    assert first.path == shared_data / "cub200_25" / first.relpath
    groups = listing.by_class()
    assert list(groups) == list(listing.classes)
    assert sum(len(v) for v in groups.values()) == 411
    assert all(item.label == label for label, cls in enumerate(listing.classes) for item in groups[cls])
    assert listing.class_names()["001.Black_footed_Albatross"] == "Black footed Albatross"


def test_nested_tree_lists_like_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    names = [
        "b_class/z.png",
        "b_class/a.PNG",
        "b_class/B.JPG",
        "b_class/a/z.jpg",
        "b_class/a b/y.png",
        "b_class/a_b/x.png",
        "b_class/a/deeper/still/w.jpeg",
        "A_class/only.png",
        "a_class/one.png",
        "a_class/sub/two.png",
    ]
    for name in names:
        write_image(root / name)
    listing = list_images(root)
    reference = ImageFolder(str(root))

    assert list(listing.classes) == ["A_class", "a_class", "b_class"] == reference.classes
    assert [(str(i.path), i.label) for i in listing.items] == reference.samples
    assert sorted(i.relpath for i in listing.items) == sorted(names)


# --- what is found ---------------------------------------------------------------------------------------------


def test_files_at_any_depth_belong_to_their_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "cat" / "top.png")
    write_image(root / "cat" / "a" / "b" / "c" / "d" / "deep.png")
    write_image(root / "dog" / "x" / "mid.png")
    listing = list_images(root)
    # ImageFolder order: the files of a directory before those of its sub-directories.
    assert found(listing) == [("cat/top.png", 0), ("cat/a/b/c/d/deep.png", 0), ("dog/x/mid.png", 1)]
    assert listing.items[1] == ImageItem(root / "cat/a/b/c/d/deep.png", "cat/a/b/c/d/deep.png", 0, "cat")


def test_extensions_match_case_insensitively(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("a.JPG", "b.Jpeg", "c.PNG", "d.png", "e.BmP", "f.WEBP", "g.Tif"):
        (root / "c").mkdir(parents=True, exist_ok=True)
        (root / "c" / name).write_bytes(b"listing does not decode")
    listing = list_images(root)
    assert [i.relpath for i in listing.items] == [
        "c/a.JPG",
        "c/b.Jpeg",
        "c/c.PNG",
        "c/d.png",
        "c/e.BmP",
        "c/f.WEBP",
        "c/g.Tif",
    ]
    assert listing.ignored == ()


def test_hidden_and_non_image_entries_are_ignored_and_recorded(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "cat" / "good.png")
    write_image(root / "cat" / ".hidden.png")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_image(root / "cat" / ".ipynb_checkpoints" / "good-checkpoint.png")
    (root / "cat" / "notes.txt").write_text("about cats\n", encoding="utf-8")
    (root / "cat" / "sub").mkdir()
    (root / "cat" / "sub" / "labels.csv").write_text("a,b\n", encoding="utf-8")
    write_image(root / ".git" / "objects" / "x.png")
    (root / ".hidden_file").write_text("x", encoding="utf-8")
    (root / "README.txt").write_text("read me\n", encoding="utf-8")
    write_image(root / "stray.png")

    listing = list_images(root)

    assert listing.classes == ("cat",)
    assert found(listing) == [("cat/good.png", 0)]
    assert findings(listing.ignored) == {
        ("cat/.hidden.png", "hidden"),
        ("cat/.DS_Store", "hidden"),
        ("cat/.ipynb_checkpoints", "hidden"),
        ("cat/notes.txt", "not_image_extension"),
        ("cat/sub/labels.csv", "not_image_extension"),
        (".git", "hidden"),
        (".hidden_file", "hidden"),
        ("README.txt", "outside_class"),
        ("stray.png", "outside_class"),
    }
    assert len(listing.ignored) == 9
    assert listing.problems == ()


def test_empty_class_folders_are_problems(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "full" / "a.png")
    (root / "empty").mkdir()
    (root / "text_only").mkdir()
    (root / "text_only" / "notes.txt").write_text("no images\n", encoding="utf-8")
    (root / "nested_empty" / "a" / "b").mkdir(parents=True)
    write_image(root / "hidden_only" / ".x.png")

    listing = list_images(root)

    assert listing.classes == ("empty", "full", "hidden_only", "nested_empty", "text_only")
    assert found(listing) == [("full/a.png", 1)]
    assert findings(listing.problems) == {
        ("empty", "empty_class"),
        ("hidden_only", "empty_class"),
        ("nested_empty", "empty_class"),
        ("text_only", "empty_class"),
    }
    assert {cls: len(items) for cls, items in listing.by_class().items()} == {
        "empty": 0,
        "full": 1,
        "hidden_only": 0,
        "nested_empty": 0,
        "text_only": 0,
    }


# --- symbolic links --------------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_directory_link_to_an_ancestor_is_a_reported_loop(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "cat" / "a.png")
    write_image(root / "cat" / "sub" / "b.png")
    (root / "cat" / "sub" / "back").symlink_to("..")  # -> cat, two levels up the walk
    (root / "cat" / "self").symlink_to(".")  # -> cat itself
    write_image(root / "dog" / "c.png")

    listing = list_images(root)

    assert found(listing) == [("cat/a.png", 0), ("cat/sub/b.png", 0), ("dog/c.png", 1)]
    assert findings(listing.problems) == {("cat/sub/back", "symlink_loop"), ("cat/self", "symlink_loop")}


@pytest.mark.timeout(20)
def test_file_link_loop_and_broken_links_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "cat" / "a.png")
    (root / "cat" / "loop.jpg").symlink_to("loop.jpg")
    (root / "cat" / "ping.png").symlink_to("pong.png")
    (root / "cat" / "pong.png").symlink_to("ping.png")
    (root / "cat" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "cat" / "broken_dir").symlink_to(tmp_path / "no_such_dir")
    (root / "cat" / "broken.txt").symlink_to(tmp_path / "nowhere.txt")
    (root / "ghost").symlink_to(tmp_path / "no_such_class")

    listing = list_images(root)

    assert listing.classes == ("cat",)
    assert found(listing) == [("cat/a.png", 0)]
    assert findings(listing.problems) == {
        ("cat/loop.jpg", "symlink_loop"),
        ("cat/ping.png", "symlink_loop"),
        ("cat/pong.png", "symlink_loop"),
        ("cat/broken.jpg", "broken_symlink"),
        ("ghost", "broken_symlink"),
    }
    # A dangling link without an image extension is not an image either way: recorded, not a problem.
    assert findings(listing.ignored) == {("cat/broken_dir", "broken_symlink"), ("cat/broken.txt", "broken_symlink")}


def test_links_to_files_and_sibling_directories_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    outside = write_image(tmp_path / "elsewhere" / "real.png")
    write_image(root / "cat" / "real" / "a.png")
    (root / "cat" / "alias").symlink_to("real")  # a sibling, not an ancestor: not a loop
    (root / "cat" / "linked.png").symlink_to(outside)
    (root / "dog").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    listing = list_images(root)

    assert found(listing) == [("cat/linked.png", 0), ("cat/alias/a.png", 0), ("cat/real/a.png", 0), ("dog/real.png", 1)]
    assert listing.items[0].path == root / "cat" / "linked.png"  # links are not resolved in the listing
    assert listing.problems == ()
    assert [(str(i.path), i.label) for i in listing.items] == ImageFolder(str(root)).samples


# --- unusable roots --------------------------------------------------------------------------------------------


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(tmp_path / "absent")


def test_file_as_root_raises(tmp_path: Path) -> None:
    write_image(tmp_path / "image.png")
    with pytest.raises(DatasetError, match="not a directory"):
        list_images(tmp_path / "image.png")


def test_root_without_class_folders_raises(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    write_image(root / "a.png")
    write_image(root / "b.png")
    (root / ".hidden").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        list_images(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        list_images(tmp_path / "empty")


# --- the torch Dataset -----------------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    write_image(root / "001.cat" / "b.png", (8, 6), (200, 0, 0))
    write_image(root / "001.cat" / "a.png", (5, 7), (0, 200, 0))
    write_image(root / "002.dog" / "sub" / "c.png", (4, 4), (0, 0, 200))
    gray = Image.new("L", (6, 3), 90)
    gray.save(root / "002.dog" / "d.png")
    return root


def test_class_folder_dataset_matches_image_folder_attributes(tiny: Path) -> None:
    dataset = ClassFolderDataset(str(tiny))
    reference = ImageFolder(str(tiny))
    assert dataset.classes == reference.classes == ["001.cat", "002.dog"]
    assert dataset.class_to_idx == reference.class_to_idx == {"001.cat": 0, "002.dog": 1}
    assert dataset.samples == reference.samples
    assert dataset.targets == reference.targets == [0, 0, 1, 1]
    assert len(dataset) == len(reference) == 4
    assert dataset.root == tiny


def test_class_folder_dataset_yields_rgb_images_and_labels(tiny: Path) -> None:
    dataset = ClassFolderDataset(tiny)
    expected = [
        ((5, 7), (0, 200, 0), 0),
        ((8, 6), (200, 0, 0), 0),
        ((6, 3), (90, 90, 90), 1),
        ((4, 4), (0, 0, 200), 1),
    ]
    for index, (size, colour, label) in enumerate(expected):
        image, target = dataset[index]
        assert isinstance(image, Image.Image)
        assert (image.mode, image.size, image.getpixel((0, 0)), target) == ("RGB", size, colour, label)
        reference, _ = ImageFolder(str(tiny))[index]
        assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_class_folder_dataset_applies_the_transform(tiny: Path) -> None:
    dataset = ClassFolderDataset(tiny, transform=transforms.Compose([transforms.Resize((4, 4)), transforms.ToTensor()]))
    image, label = dataset[3]
    assert isinstance(image, torch.Tensor)
    assert image.shape == (3, 4, 4)
    assert label == 1
    assert torch.allclose(image[:, 0, 0], torch.tensor([0.0, 0.0, 200 / 255]))
    batch, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch.shape == (4, 3, 4, 4)
    assert labels.tolist() == [0, 0, 1, 1]


def test_class_folder_dataset_from_a_listing_and_bad_files(tiny: Path) -> None:
    (tiny / "002.dog" / "zz_broken.png").write_bytes(b"not a png at all")
    listing = list_images(tiny)
    dataset = ClassFolderDataset(listing, max_pixels=40)
    assert dataset.listing is listing
    assert len(dataset) == 5
    assert dataset.samples[3] == (str(tiny / "002.dog" / "zz_broken.png"), 1)
    with pytest.raises(ImageReadError) as info:
        dataset[3]
    assert info.value.kind == "not_an_image"
    with pytest.raises(ImageReadError) as info:
        dataset[1]  # 8 x 6 = 48 pixels > max_pixels=40
    assert info.value.kind == "too_large"
    assert dataset[0][0].size == (5, 7)  # 35 pixels: allowed


def test_link_to_the_dataset_root_is_a_loop_not_a_relabelling(tmp_path: Path) -> None:
    # Regression: a link from a class folder to the root used to list class b's images under class a.
    for cls in ("a", "b"):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "ds" / cls / f"{cls}.png")
    (tmp_path / "ds" / "a" / "up").symlink_to("..")
    listing = list_images(tmp_path / "ds")
    assert [(i.relpath, i.label) for i in listing.items] == [("a/a.png", 0), ("b/b.png", 1)]
    assert [(p.relpath, p.kind) for p in listing.problems] == [("a/up", "symlink_loop")]


# --- one file under two labels ------------------------------------------------------------------------------------


def test_files_that_links_put_in_two_classes_are_found_and_copies_are_not(tmp_path: Path) -> None:
    """A class folder linked to another's, a hard link and a file link into another class: one file each, found by
    its identity on disk; a byte-identical copy, and a link within one class, are other matters."""
    root = tmp_path / "data"
    for name in ("0", "1"):
        write_image(root / "a" / f"{name}.png", colour=(int(name), 0, 0))
    write_image(root / "c" / "own.png", colour=(9, 9, 9))
    (root / "b").symlink_to("a", target_is_directory=True)  # the class folder is a's
    os.link(root / "a" / "1.png", root / "c" / "hard.png")
    (root / "d").mkdir()
    (root / "d" / "soft.png").symlink_to("../c/own.png")
    (root / "d" / "copy.png").write_bytes((root / "c" / "own.png").read_bytes())  # a copy: another file
    (root / "d" / "again").symlink_to(".")  # within one class (a loop, reported as such)
    (root / "d" / "same.png").symlink_to("copy.png")  # one file twice in one class: one label

    listing = list_images(root)

    groups = [[i.relpath for i in items] for items in listing.shared_files()]
    assert groups == [["a/0.png", "b/0.png"], ["a/1.png", "b/1.png", "c/hard.png"], ["c/own.png", "d/soft.png"]]
    linked = {f.relpath: f.reason for f in listing.linked()}
    assert list(linked) == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "c/hard.png", "c/own.png", "d/soft.png"]
    assert {f.kind for f in listing.linked()} == {"linked_across_classes"}
    assert linked["c/hard.png"] == "the same file as a/1.png, b/1.png, through a link: one image labelled 'a' and " \
        "'b' and 'c'"  # fmt: skip
    # Only the listing's own items count: a subset without b, or without the hard link, has fewer.
    assert [[i.relpath for i in g] for g in listing.subset(["a", "c"]).shared_files()] == [["a/1.png", "c/hard.png"]]
    assert listing.subset(["a", "b"], max_per_class=1).shared_files()[0][1].relpath == "b/0.png"
    assert listing.without({"c/hard.png", "d/soft.png"}).subset(["a", "c", "d"]).shared_files() == []
