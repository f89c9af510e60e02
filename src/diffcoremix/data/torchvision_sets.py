"""torchvision datasets by name, materialised once as class folders (DATA for every stage of the method).

``diffcoremix train cifar100`` names a torchvision dataset instead of a folder. The named split is decoded once
into an ordinary class-folder copy, ``ROOT/<name>/<split>/<NNN.class>/<index:06d>.png``, and from then on
scan, generate, augment and train read that folder like any other. ``ROOT`` is ``$DIFFCOREMIX_DATA_DIR``, else
``~/.cache/diffcoremix/datasets``; torchvision's own raw files go to ``ROOT/<name>/raw``.

Class folders are named ``NNN.<class name>`` (NNN the label, zero-padded), the convention of CUB-200's folders:
sorted folder order is then torchvision's label order, so :func:`~diffcoremix.data.folder.list_images` gives
every image torchvision's target, whatever the class names are (Fashion-MNIST's are not in alphabetical
order), and :func:`~diffcoremix.data.classnames.prompt_name` drops the prefix again. Every class gets its folder,
even one that has no image in the split, so the splits of one dataset share their labels.

Each PNG is written atomically and the marker ``.diffcoremix-dataset.json`` last: a folder with a marker is
complete, and a killed run resumes by writing only the missing files. A marker written under another
torchvision version makes the next call check the folder once (labels read again; no image is decoded when all
files are there). Images are saved in their own mode
(MNIST stays grayscale); the training transforms convert channels.

Registered (:data:`TORCHVISION_DATASETS`): ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist`` (train/test),
``flowers102``, ``dtd``, ``fgvc_aircraft`` (train/val/test; aircraft at the "variant" level), ``stanford_cars``,
``food101`` (train/test), ``oxford_pets`` (trainval/test) and ``caltech101``, which has no official split: its one
split, ``train``, holds every image. Class names are the dataset's ``classes`` (Caltech-101's ``categories``);
torchvision has none for Flowers-102, whose classes are named by label, ``class_000`` to ``class_101`` (give
prompt words with a class map).

CUB-200-2011 is not in torchvision: download it and give its class folders (``DATA/<class>/<images>``) instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from diffcoremix.atomic import atomic_write_bytes, atomic_write_text
from diffcoremix.errors import ConfigError, DatasetError, UnknownNameError
from diffcoremix.registry import Registry
from diffcoremix.scratch import scratch_root

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "DIFFCOREMIX_DATA_DIR"
"""Environment variable naming ROOT, the folder that holds materialised datasets."""
DEFAULT_ROOT = Path("~/.cache/diffcoremix/datasets")
MARKER = ".diffcoremix-dataset.json"
"""Written last into ``ROOT/<name>/<split>``: its presence means the folder is complete."""
MARKER_FORMAT = 1
PREFIX = "torchvision:"
"""``torchvision:NAME`` names a dataset explicitly (a folder called NAME is then not looked for)."""
NOT_IN_TORCHVISION = "CUB-200 is not in torchvision: give its class folder (DATA/<class>/<images>) instead"

_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_IMAGE_NAME = re.compile(r"\d{6,}\.png")
_MAX_NAME_BYTES = 200  # below the 255-byte file name limit, with room for the NNN. prefix


def _classes_attribute(dataset: Any) -> list[str]:
    return [str(c) for c in dataset.classes]


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to build one torchvision dataset for a split and read its labels and class names."""

    class_name: str
    """The class in ``torchvision.datasets`` (``"CIFAR10"``)."""
    splits: tuple[str, ...]
    split_arg: Literal["train", "split", "none"]
    """How the split reaches the constructor: ``train=(split == "train")``, ``split=split``, or not at all."""
    labels: Callable[[Any], list[int]]
    """The label of every index, read without decoding any image."""
    classes: Callable[[Any], list[str]] = _classes_attribute
    """Class names in label order (the dataset's ``classes`` by default)."""
    kwargs: tuple[tuple[str, Any], ...] = ()
    """Further constructor arguments (``annotation_level="variant"``)."""
    no_download: str = ""
    """Why torchvision cannot download it, when it cannot (the user must place the files)."""

    def build(self, raw: Path, split: str, download: bool) -> Any:
        """The torchvision dataset for ``split``, its files under ``raw``."""
        import torchvision.datasets

        kwargs = dict(self.kwargs)
        if self.split_arg == "train":
            kwargs["train"] = split == "train"
        elif self.split_arg == "split":
            kwargs["split"] = split
        if download and not self.no_download:
            kwargs["download"] = True
        return getattr(torchvision.datasets, self.class_name)(str(raw), **kwargs)


class UnknownDatasetError(UnknownNameError, DatasetError):
    """A dataset name that is not registered; the message lists the known ones and says where CUB-200 is."""

    def __str__(self) -> str:
        return f"{super().__str__()}; {NOT_IN_TORCHVISION}"


TORCHVISION_DATASETS: Registry[TorchvisionSpec] = Registry("torchvision dataset")


def _attribute_labels(attribute: str) -> Callable[[Any], list[int]]:
    return lambda ds: [int(label) for label in getattr(ds, attribute)]


def _flowers_classes(ds: Any) -> list[str]:
    # torchvision has no names for Flowers-102's classes: name them by label (a class map gives prompt words).
    return [f"class_{i:03d}" for i in range(102)]


_TARGETS = _attribute_labels("targets")
_LABELS = _attribute_labels("_labels")
TORCHVISION_DATASETS.add("cifar10", TorchvisionSpec("CIFAR10", ("train", "test"), "train", _TARGETS))
TORCHVISION_DATASETS.add("cifar100", TorchvisionSpec("CIFAR100", ("train", "test"), "train", _TARGETS))
TORCHVISION_DATASETS.add("mnist", TorchvisionSpec("MNIST", ("train", "test"), "train", _TARGETS))
TORCHVISION_DATASETS.add("fashion_mnist", TorchvisionSpec("FashionMNIST", ("train", "test"), "train", _TARGETS))
TORCHVISION_DATASETS.add(
    "flowers102", TorchvisionSpec("Flowers102", ("train", "val", "test"), "split", _LABELS, _flowers_classes)
)
TORCHVISION_DATASETS.add(
    "stanford_cars",
    TorchvisionSpec(
        "StanfordCars",
        ("train", "test"),
        "split",
        lambda ds: [int(label) for _, label in ds._samples],
        no_download="its original URL is gone; place devkit/, cars_train/, cars_test/ and "
        "cars_test_annos_withlabels.mat in RAW/stanford_cars",
    ),
)
# Caltech-101 has no official split: its one split, "train", holds every image.
TORCHVISION_DATASETS.add(
    "caltech101",
    TorchvisionSpec(
        "Caltech101",
        ("train",),
        "none",
        _attribute_labels("y"),
        lambda ds: [str(c) for c in ds.categories],
        kwargs=(("target_type", "category"),),
    ),
)
TORCHVISION_DATASETS.add(
    "fgvc_aircraft",
    TorchvisionSpec(
        "FGVCAircraft", ("train", "val", "test"), "split", _LABELS, kwargs=(("annotation_level", "variant"),)
    ),
)
TORCHVISION_DATASETS.add("oxford_pets", TorchvisionSpec("OxfordIIITPet", ("trainval", "test"), "split", _LABELS))
TORCHVISION_DATASETS.add("food101", TorchvisionSpec("Food101", ("train", "test"), "split", _LABELS))
TORCHVISION_DATASETS.add("dtd", TorchvisionSpec("DTD", ("train", "val", "test"), "split", _LABELS))


def dataset_name(spec: str) -> str:
    """The registered name in ``spec`` (``cifar10`` or ``torchvision:cifar10``).

    Raises:
        UnknownDatasetError: it is not registered.
    """
    name = spec.removeprefix(PREFIX)
    if name not in TORCHVISION_DATASETS:
        raise UnknownDatasetError("torchvision dataset", name, TORCHVISION_DATASETS.names())
    return name


def default_root() -> Path:
    """``$DIFFCOREMIX_DATA_DIR``, else ``~/.cache/diffcoremix/datasets``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_ROOT).expanduser()


def folder_names(classes: Sequence[str]) -> list[str]:
    """Class folder names in label order: ``NNN.<name>``, NNN the zero-padded label (at least 3 digits).

    ``/`` and NUL become ``_``, surrounding white space goes, names are cut to 200 bytes, and everything else
    (unicode, dots, spaces) is kept; the prefix keeps names apart after sanitising and sorts folders by label.

    Example:
        >>> folder_names(["T-shirt/top", "Trouser"])
        ['000.T-shirt_top', '001.Trouser']
    """
    width = max(3, len(str(len(classes) - 1)))
    names = []
    for label, name in enumerate(classes):
        clean = name.replace("/", "_").replace("\0", "_").strip()
        clean = clean.encode("utf-8")[:_MAX_NAME_BYTES].decode("utf-8", "ignore").strip()
        names.append(f"{label:0{width}d}.{clean or f'class_{label:0{width}d}'}")
    return names


def _torchvision_version() -> str:
    # From the installed package's metadata: the marker check must not import torch.
    return importlib.metadata.version("torchvision")


def _marker_matches(path: Path, name: str, split: str) -> bool:
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = {"format": MARKER_FORMAT, "name": name, "split": split, "torchvision": _torchvision_version()}
    return isinstance(marker, dict) and all(marker.get(k) == v for k, v in wanted.items())


@contextlib.contextmanager
def _dataset_lock(folder: Path) -> Iterator[None]:
    """One process at a time per dataset (the ranks of a distributed run all resolve DATA); the kernel drops the
    lock of a killed process. The lock file stays: removing it would race with a waiter that has opened it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".diffcoremix.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_dataset(name: str, spec: TorchvisionSpec, raw: Path, split: str, download: bool) -> Any:
    """The torchvision dataset, with its missing-files and download failures as one-line :class:`DatasetError`."""
    try:
        return spec.build(raw, split, download)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if first.startswith("Dataset") and "not found" in first:
            if spec.no_download:
                how = spec.no_download.replace("RAW", str(raw))
                raise DatasetError(f"{name}: raw files not found in {raw}; it cannot be downloaded: {how}") from None
            if download:
                raise DatasetError(f"{name}: raw files not found in {raw} after downloading them") from None
            raise DatasetError(f"{name}: raw files not found in {raw}; --download fetches them") from None
        if download:
            raise DatasetError(f"{name}: cannot download into {raw}: {first}") from None
        raise
    except OSError as err:  # urllib's URLError, a full disk
        if download:
            raise DatasetError(f"{name}: cannot download into {raw}: {err}") from None
        raise


def _png(image: Any) -> bytes:
    if image.mode not in _PNG_MODES:  # CMYK JPEGs (Caltech-101 has a few)
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_entries(folder: Path, folders: Sequence[str]) -> None:
    """Refuse a split folder that holds class folders of another version: they would shift the labels."""
    expected = set(folders)
    stale = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.name not in expected)
    if stale:
        raise DatasetError(
            f"{folder} holds {stale[0]!r}, which is not a class folder of this dataset; remove {folder} to rebuild it"
        )


def materialise(
    name: str, split: str = "train", root: str | Path | None = None, *, download: bool = False, progress: bool = False
) -> Path:
    """Write a torchvision dataset's split as class folders of PNGs, once; later calls return at once.

    Args:
        name: a registered name (``cifar10``; ``torchvision:cifar10`` also works), see ``TORCHVISION_DATASETS``.
        split: one of the dataset's splits (``train``, ``test``...).
        root: ROOT (default :func:`default_root`).
        download: let torchvision fetch the raw files into ``ROOT/<name>/raw`` when they are missing.
        progress: show a progress bar.

    Returns:
        ``ROOT/<name>/<split>``, a class-folder dataset; the image of torchvision index ``i`` is
        ``<NNN.class>/<i:06d>.png``.

    Raises:
        UnknownDatasetError: ``name`` is not registered.
        ConfigError: ``split`` is not one of the dataset's splits.
        DatasetError: the raw files are missing (and not downloaded), or the folder holds foreign class folders.

    Example:
        >>> data = materialise("cifar10", "test", download=True)  # doctest: +SKIP
        >>> sorted(p.name for p in data.iterdir())[:2]  # doctest: +SKIP
        ['000.airplane', '001.automobile']
    """
    name = dataset_name(name)
    spec = TORCHVISION_DATASETS.get(name)
    if split not in spec.splits:
        raise ConfigError("split", split, f"one of {', '.join(spec.splits)} for {name}")
    base = Path(root).expanduser() if root is not None else default_root()
    folder = base / name / split
    if _marker_matches(folder / MARKER, name, split):
        return folder
    with _dataset_lock(base / name):
        if _marker_matches(folder / MARKER, name, split):  # another process finished it while we waited
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        with scratch_root(folder):  # its temporary files, and a killed run's, in folder/.diffcoremix-tmp
            _write_split(name, spec, base / name / "raw", split, folder, download=download, progress=progress)
    return folder


def _write_split(
    name: str, spec: TorchvisionSpec, raw: Path, split: str, folder: Path, *, download: bool, progress: bool
) -> None:
    dataset = _open_dataset(name, spec, raw, split, download)
    classes = spec.classes(dataset)
    labels = spec.labels(dataset)
    if len(labels) != len(dataset) or any(not 0 <= label < len(classes) for label in labels):
        raise DatasetError(f"{name} {split}: labels do not match its {len(classes)} classes and {len(dataset)} items")
    folders = folder_names(classes)
    folder.mkdir(parents=True, exist_ok=True)
    _check_entries(folder, folders)
    for class_folder in folders:  # every class, so that labels agree across splits
        (folder / class_folder).mkdir(exist_ok=True)
    present = {f"{class_folder}/{e.name}" for class_folder in folders for e in os.scandir(folder / class_folder)}
    targets = [f"{folders[label]}/{index:06d}.png" for index, label in enumerate(labels)]
    for stray in sorted(present - set(targets)):  # an image of ours under another label: it would be mislabelled
        file_name = stray.rsplit("/", 1)[1]
        if not _IMAGE_NAME.fullmatch(file_name):
            continue
        index = int(file_name.split(".")[0])
        ours = index < len(labels) and (folder / stray).read_bytes() == _png(dataset[index][0])
        if ours:  # what we wrote for that index: ours to remove
            logger.warning("%s: removing %s, which is not an image of this split", folder, stray)
            (folder / stray).unlink()
        else:
            logger.warning("%s: %s is not an image of this split and was not written by diffcoremix: left in place "
                           "(image loaders will read it; move it away)", folder, stray)  # fmt: skip
    missing = [index for index, target in enumerate(targets) if target not in present]
    logger.info("%s %s: writing %d of %d images to %s", name, split, len(missing), len(targets), folder)
    done = len(targets) - len(missing)
    with tqdm(total=len(targets), initial=done, desc=f"{name} {split}", unit="img", disable=not progress) as bar:
        for index in missing:
            image, _ = dataset[index]
            atomic_write_bytes(folder / targets[index], _png(image))
            bar.update()
    marker = {
        "format": MARKER_FORMAT,
        "name": name,
        "split": split,
        "count": len(targets),
        "classes": list(classes),
        "folders": folders,
        "torchvision": _torchvision_version(),
    }
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=2, ensure_ascii=False) + "\n")


def resolve_data(
    spec: str | Path,
    *,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    progress: bool = False,
) -> Path:
    """DATA as given on the command line: an existing path, else a torchvision dataset name.

    An existing path wins over a name (a folder called ``cifar10`` in the working directory is that folder);
    ``torchvision:NAME`` always means the dataset.

    Args:
        spec: a path, ``NAME`` or ``torchvision:NAME``.
        split, root, download, progress: see :func:`materialise` (unused for a path).

    Returns:
        The path unchanged, or the materialised class folder.

    Raises:
        DatasetError: ``spec`` is neither an existing path nor a known name (and what :func:`materialise` raises).
    """
    text = str(spec)
    if not text:
        raise DatasetError("DATA is empty: give a class folder or a torchvision dataset name")
    if not text.startswith(PREFIX) and Path(spec).exists():
        return Path(spec)
    if text.removeprefix(PREFIX) in TORCHVISION_DATASETS:
        return materialise(text, split, root, download=download, progress=progress)
    raise DatasetError(
        f"dataset {text!r} is not an existing path nor a torchvision dataset name "
        f"({', '.join(TORCHVISION_DATASETS.names())}); {NOT_IN_TORCHVISION}"
    )
