"""torchvision datasets by name: every registered dataset is read by torchvision's own class from tiny files in
its real on-disk format (written here, no network) and materialised as class folders, once, resumably."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torchvision.datasets as tvd
from PIL import Image

from diffcoremix.data.folder import list_images
from diffcoremix.data.torchvision_sets import (
    MARKER,
    TORCHVISION_DATASETS,
    TorchvisionSpec,
    UnknownDatasetError,
    folder_names,
    materialise,
    resolve_data,
)
from diffcoremix.errors import ConfigError, DatasetError, UnknownNameError
from diffcoremix.scratch import SCRATCH_DIR

from .helpers import run_cli

RNG_SEED = 0
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pixels(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _jpegs(folder: Path, names: list[str], rng: np.random.Generator, *, gray_every: int = 0) -> None:
    """Small JPEGs (every ``gray_every``-th one grayscale, as some Caltech-101 images are)."""
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        gray = gray_every and i % gray_every == 0
        Image.fromarray(_pixels(rng, 1, (10, 12) if gray else (10, 12, 3))[0]).save(path)


# Writers of each dataset's raw files, in torchvision's layout below ROOT/<name>/raw. Each returns the number of
# images per split. torchvision checks the MD5 of CIFAR's and Flowers-102's files against the sums of the
# published archives, which tiny test files cannot match; the writers put the sums of the files they wrote into
# that table (monkeypatch, undone after the test), so the integrity check still runs, against these files.


def _write_cifar(raw: Path, mp: pytest.MonkeyPatch, cls: type, train_sizes: list[int], labels_key: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    folder = raw / cls.base_folder  # type: ignore[attr-defined]
    folder.mkdir(parents=True)
    n_classes = 10 if cls is tvd.CIFAR10 else 4  # CIFAR-100's class list comes from its meta file
    sums = []
    for (name, _), n in zip(cls.train_list + cls.test_list, [*train_sizes, 3], strict=True):  # type: ignore[attr-defined]
        batch = {"data": _pixels(rng, n, (3072,)), labels_key: rng.integers(0, n_classes, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
        sums.append([name, _md5(folder / name)])
    meta = cls.meta  # type: ignore[attr-defined]
    names = CIFAR10_CLASSES if cls is tvd.CIFAR10 else ["apple", "aquarium_fish", "baby", "bear"]
    (folder / meta["filename"]).write_bytes(pickle.dumps({meta["key"]: list(names)}))
    mp.setattr(cls, "train_list", sums[: len(train_sizes)])
    mp.setattr(cls, "test_list", sums[len(train_sizes) :])
    mp.setattr(cls, "meta", {**meta, "md5": _md5(folder / meta["filename"])})


def write_cifar10(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    _write_cifar(raw, mp, tvd.CIFAR10, [2, 3, 2, 1, 2], "labels")
    return {"train": 10, "test": 3}


def write_cifar100(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    _write_cifar(raw, mp, tvd.CIFAR100, [6], "fine_labels")
    return {"train": 6, "test": 3}


def _idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of LeCun's files: zero, the type (0x08 = ubyte), the rank, big-endian sizes, the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(folder: Path, sizes: dict[str, int]) -> dict[str, int]:
    rng = np.random.default_rng(RNG_SEED)
    folder.mkdir(parents=True)
    for prefix, split in (("train", "train"), ("t10k", "test")):
        _idx(folder / f"{prefix}-images-idx3-ubyte", _pixels(rng, sizes[split], (28, 28)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, sizes[split]))
    return {"train": sizes["train"], "test": sizes["test"]}


def write_mnist(raw: Path, mp: pytest.MonkeyPatch, sizes: dict[str, int] | None = None) -> dict[str, int]:
    return _write_mnist(raw / "MNIST" / "raw", sizes or {"train": 12, "test": 4})


def write_fashion_mnist(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    return _write_mnist(raw / "FashionMNIST" / "raw", {"train": 12, "test": 4})


def write_flowers102(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    base = raw / "flowers-102"
    _jpegs(base / "jpg", [f"image_{i:05d}.jpg" for i in range(1, 8)], np.random.default_rng(RNG_SEED))
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([[1, 5, 102, 5, 1, 2, 3]])})
    scipy.io.savemat(base / "setid.mat", {"trnid": [[1, 2, 3]], "valid": [[4, 5]], "tstid": [[6, 7]]})
    files = tvd.Flowers102._file_dict
    mp.setattr(
        tvd.Flowers102,
        "_file_dict",
        {**files, **{k: (files[k][0], _md5(base / files[k][0])) for k in ("label", "setid")}},
    )
    return {"train": 3, "val": 2, "test": 2}


def write_stanford_cars(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    base, rng = raw / "stanford_cars", np.random.default_rng(RNG_SEED)
    (base / "devkit").mkdir(parents=True)
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ford F-150/Raptor 2012"], dtype=object)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    for split, mat, n in (("train", base / "devkit" / "cars_train_annos.mat", 4), ("test", None, 3)):
        annotations = np.zeros(n, dtype=[("fname", "O"), ("class", "O")])
        annotations["fname"] = [f"{i:05d}.jpg" for i in range(1, n + 1)]
        annotations["class"] = [int(c) for c in rng.integers(1, 4, n)]
        scipy.io.savemat(mat or base / "cars_test_annos_withlabels.mat", {"annotations": annotations})
        _jpegs(base / f"cars_{split}", list(annotations["fname"]), rng)
    return {"train": 4, "test": 3}


def write_caltech101(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    base, rng = raw / "caltech101" / "101_ObjectCategories", np.random.default_rng(RNG_SEED)
    for category, n in (("BACKGROUND_Google", 2), ("Faces", 3), ("accordion", 2), ("yin_yang", 1)):
        _jpegs(base / category, [f"image_{i:04d}.jpg" for i in range(1, n + 1)], rng, gray_every=2)
    return {"train": 6}  # BACKGROUND_Google is not a class for torchvision


def write_fgvc_aircraft(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    data, rng = raw / "fgvc-aircraft-2013b" / "data", np.random.default_rng(RNG_SEED)
    variants = ["707-320", "A300B4", "F/A-18"]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    sizes = {"train": 3, "val": 2, "test": 2}
    for split, n in sizes.items():
        ids = [f"{split}{i:03d}" for i in range(n)]
        (data / f"images_variant_{split}.txt").write_text(
            "".join(f"{i} {variants[k % 3]}\n" for k, i in enumerate(ids))
        )
        _jpegs(data / "images", [f"{i}.jpg" for i in ids], rng)
    return sizes


def write_oxford_pets(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    base, rng = raw / "oxford-iiit-pet", np.random.default_rng(RNG_SEED)
    (base / "annotations").mkdir(parents=True)
    sizes = {"trainval": 3, "test": 3}
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1)]
    for split, n in sizes.items():
        rows = [(f"{breed}_{split}{i}", label, species) for i, (breed, label, species) in enumerate(breeds[:n])]
        (base / "annotations" / f"{split}.txt").write_text("".join(f"{r} {c} {s} 1\n" for r, c, s in rows))
        _jpegs(base / "images", [f"{r}.jpg" for r, _, _ in rows], rng)
    return sizes


def write_food101(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    base, rng = raw / "food-101", np.random.default_rng(RNG_SEED)
    (base / "meta").mkdir(parents=True)
    listing = {"train": {"apple_pie": ["apple_pie/1", "apple_pie/2"], "crème_brûlée": ["crème_brûlée/3"]},
               "test": {"apple_pie": ["apple_pie/4"], "crème_brûlée": ["crème_brûlée/5"]}}  # fmt: skip
    for split, classes in listing.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(classes))
        _jpegs(base / "images", [f"{p}.jpg" for paths in classes.values() for p in paths], rng)
    return {"train": 3, "test": 2}


def write_dtd(raw: Path, mp: pytest.MonkeyPatch) -> dict[str, int]:
    data, rng = raw / "dtd" / "dtd", np.random.default_rng(RNG_SEED)
    (data / "labels").mkdir(parents=True)
    sizes = {"train": 3, "val": 2, "test": 2}
    for split, n in sizes.items():
        files = [f"{cls}/{cls}_{split}{i}.jpg" for i, cls in enumerate(["banded", "zigzagged", "banded"][:n])]
        (data / "labels" / f"{split}1.txt").write_text("".join(f"{f}\n" for f in files))
        _jpegs(data / "images", files, rng)
    return sizes


WRITERS: dict[str, Callable[[Path, pytest.MonkeyPatch], dict[str, int]]] = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "mnist": write_mnist,
    "fashion_mnist": write_fashion_mnist,
    "flowers102": write_flowers102,
    "stanford_cars": write_stanford_cars,
    "caltech101": write_caltech101,
    "fgvc_aircraft": write_fgvc_aircraft,
    "oxford_pets": write_oxford_pets,
    "food101": write_food101,
    "dtd": write_dtd,
}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_every_registered_dataset_is_tested_from_its_raw_files() -> None:
    assert set(WRITERS) == set(TORCHVISION_DATASETS.names())


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_materialise_writes_torchvision_images_and_labels_as_class_folders(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / name / "raw"
    sizes = WRITERS[name](raw, monkeypatch)
    spec = TORCHVISION_DATASETS.get(name)
    assert sorted(sizes) == sorted(spec.splits)
    for split, size in sizes.items():
        folder = materialise(name, split, tmp_path)
        assert folder == tmp_path / name / split
        dataset = spec.build(raw, split, download=False)  # torchvision's class, read again independently
        listing = list_images(folder)
        assert listing.classes == tuple(folder_names(spec.classes(dataset)))
        assert len(listing) == len(dataset) == size
        assert listing.problems == tuple(f for f in listing.problems if f.kind == "empty_class")
        for item in listing.items:
            index = int(item.path.stem)
            image, target = dataset[index]
            assert item.label == target, item.relpath
            with Image.open(item.path) as saved:
                assert saved.mode == image.mode  # grayscale stays grayscale
                np.testing.assert_array_equal(np.asarray(saved), np.asarray(image))
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        assert (marker["name"], marker["split"], marker["count"]) == (name, split, size)
        assert marker["classes"] == spec.classes(dataset)


def test_cifar10_folders_carry_torchvision_class_names_and_every_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path / "cifar10" / "raw", monkeypatch)
    folder = materialise("cifar10", "test", tmp_path)
    # Three test images, yet all ten classes have a folder: train and test share their labels.
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        f"{i:03d}.{c}" for i, c in enumerate(CIFAR10_CLASSES)
    ]
    assert sum(1 for _ in folder.rglob("*.png")) == 3


def test_a_second_call_returns_without_opening_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path / "cifar10" / "raw", monkeypatch)
    folder = materialise("cifar10", "train", tmp_path)
    before = _mtimes(folder)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was opened again")

    monkeypatch.setattr(TorchvisionSpec, "build", fail)
    assert materialise("cifar10", "train", tmp_path) == folder
    assert resolve_data("torchvision:cifar10", root=tmp_path) == folder
    assert _mtimes(folder) == before


def test_a_folder_without_marker_is_completed_without_rewriting_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path / "cifar10" / "raw", monkeypatch)
    folder = materialise("cifar10", "train", tmp_path)
    expected = _files(folder)
    (folder / MARKER).unlink()
    pngs = sorted(folder.rglob("*.png"))
    for path in pngs[::3]:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in pngs if p.exists()}
    # An image of ours under another class (as a run with other labels would leave it) would be mislabelled.
    stray = next(p for p in kept if not p.parent.name.startswith("000."))
    (folder / "000.airplane" / stray.name).write_bytes(stray.read_bytes())
    # A photo of the user's under a name of our form is not ours, whatever its name: it stays.
    theirs = folder / "000.airplane" / next(p.name for p in kept if p.parent.name.startswith("001."))
    theirs.write_bytes(stray.read_bytes() + b"the user's")
    materialise("cifar10", "train", tmp_path)
    assert theirs.read_bytes() == stray.read_bytes() + b"the user's"
    theirs.unlink()
    assert _files(folder) == expected
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


# The kill is real: a subprocess materialises MNIST and SIGKILLs itself inside its 6th atomic write, after the
# temporary file is written and synced but before the rename (os.replace), the worst moment for a writer.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from diffcoremix.data.torchvision_sets import materialise
    calls = 0
    real_replace = os.replace
    def replace(src, dst):
        global calls
        calls += 1
        if calls == 6:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    os.replace = replace
    materialise("mnist", "train", sys.argv[1])
    """
)


def test_a_killed_run_resumes_to_the_same_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for root in (tmp_path / "killed", tmp_path / "fresh"):
        write_mnist(root / "mnist" / "raw", monkeypatch, {"train": 20, "test": 2})
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "killed")], check=False, timeout=120)
    assert result.returncode == -signal.SIGKILL
    folder = tmp_path / "killed" / "mnist" / "train"
    assert not (folder / MARKER).exists()
    written = {p: p.stat().st_ino for p in folder.rglob("*.png")}
    assert len(written) == 5
    assert len(list((folder / SCRATCH_DIR).glob("*.tmp"))) == 1  # the 6th image, never renamed

    assert materialise("mnist", "train", tmp_path / "killed") == folder
    assert {p: p.stat().st_ino for p in written} == written  # the killed run's files were kept, not rewritten
    assert not (folder / SCRATCH_DIR).exists()  # swept, and removed
    fresh = materialise("mnist", "train", tmp_path / "fresh")
    killed_files, fresh_files = _files(folder), _files(fresh)
    assert killed_files.keys() == fresh_files.keys()
    assert {k: v for k, v in killed_files.items() if k != MARKER} == {
        k: v for k, v in fresh_files.items() if k != MARKER
    }
    assert json.loads(killed_files[MARKER]) == json.loads(fresh_files[MARKER])


def test_a_second_process_waits_while_one_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "mnist" / "raw", monkeypatch)
    fd = os.open(tmp_path / "mnist" / ".diffcoremix.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a run writing this dataset holds it
    try:
        waiter = threading.Thread(target=materialise, args=("mnist", "test", tmp_path))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()
        assert not (tmp_path / "mnist" / "test").exists()
    finally:
        os.close(fd)
    waiter.join(60)
    assert (tmp_path / "mnist" / "test" / MARKER).is_file()


def test_missing_raw_files_say_where_and_that_download_fetches_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        materialise("cifar10", "train", tmp_path)
    message = str(caught.value)
    assert "cifar10" in message
    assert str(tmp_path / "cifar10" / "raw") in message
    assert "--download" in message
    assert "\n" not in message
    assert not (tmp_path / "cifar10" / "train" / MARKER).exists()


def test_stanford_cars_says_it_cannot_be_downloaded(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"cannot be downloaded.*stanford_cars/raw/stanford_cars"):
        materialise("stanford_cars", "train", tmp_path, download=True)


def test_unknown_names_list_the_known_ones_and_point_cub_to_class_folders(tmp_path: Path) -> None:
    with pytest.raises(UnknownDatasetError) as caught:
        materialise("cub200", "train", tmp_path)
    assert isinstance(caught.value, UnknownNameError)
    assert isinstance(caught.value, DatasetError)
    assert "cifar100" in str(caught.value)
    assert "CUB-200 is not in torchvision" in str(caught.value)
    with pytest.raises(DatasetError, match=r"does-not-exist.*not an existing path.*cifar10.*CUB-200"):
        resolve_data(tmp_path / "does-not-exist", root=tmp_path)


def test_unknown_split_lists_the_splits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"split must be one of trainval, test for oxford_pets, got 'train'"):
        materialise("oxford_pets", "train", tmp_path)
    with pytest.raises(ConfigError, match=r"one of train for caltech101"):
        resolve_data("caltech101", split="test", root=tmp_path)


def test_resolve_data_returns_an_existing_folder_unchanged(tmp_path: Path) -> None:
    (tmp_path / "cifar10" / "bird").mkdir(parents=True)
    for spec in (tmp_path / "cifar10", str(tmp_path / "cifar10")):
        assert resolve_data(spec, root=tmp_path / "unused") == tmp_path / "cifar10"
    assert not (tmp_path / "unused").exists()


def test_root_defaults_to_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "mnist" / "raw", monkeypatch)
    monkeypatch.setenv("DIFFCOREMIX_DATA_DIR", str(tmp_path))
    assert resolve_data("mnist", split="test") == tmp_path / "mnist" / "test"


def test_a_foreign_class_folder_is_refused_not_mixed_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "mnist" / "raw", monkeypatch)
    (tmp_path / "mnist" / "test" / "zero").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"holds 'zero'.*remove"):
        materialise("mnist", "test", tmp_path)


def test_folder_names_are_safe_sorted_by_label_and_distinct() -> None:
    classes = ["T-shirt/top", "a\0b", "  Crème brûlée ", "", "x" * 300, "a/b", "a_b", ".hidden", "日本"]
    names = folder_names(classes)
    assert names[:4] == ["000.T-shirt_top", "001.a_b", "002.Crème brûlée", "003.class_003"]
    assert names[5:] == ["005.a_b", "006.a_b", "007..hidden", "008.日本"]
    assert len(names[4].encode()) <= 204
    assert sorted(names) == names
    assert len(set(names)) == len(names)
    assert not any("/" in n or "\0" in n for n in names)
    assert folder_names([str(i) for i in range(1001)])[1000] == "1000.1000"


def test_train_and_eval_take_a_dataset_name_through_the_real_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train mnist --test mnist` reads the train and test splits by name; `eval --data mnist` the test split."""
    root = tmp_path / "datasets"
    counts = write_mnist(root / "mnist" / "raw", monkeypatch, {"train": 40, "test": 20})
    run = tmp_path / "run"
    args = ["--data-dir", str(root), "--model", "resnet20", "--mean", "0.5", "--std", "0.25", "--img-size", "16",
            "-b", "8", "--max-steps", "5", "-o", str(run)]  # fmt: skip
    result = run_cli("train", "mnist", "--test", "mnist", *args)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_samples"] == counts["train"]
    assert summary["test"]["n"] == counts["test"]
    assert summary["classes"] == sorted(p.name for p in (root / "mnist" / "train").iterdir() if p.is_dir())
    shown = run_cli("eval", str(run), "--data", "mnist", "--data-dir", str(root))
    assert shown.returncode == 0, shown.stderr
    assert f"{counts['test']:>6}" in shown.stdout
