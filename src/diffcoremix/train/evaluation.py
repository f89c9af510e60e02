"""Evaluating trained classifiers (METHOD.md §8): the figures of each RUN on a class-folder test set, and the
paper's Fig. 5, Grad-CAM maps of the same test images side by side across runs.

::

    OUTPUT/run.json             the run record (command "eval", DATA, the RUNs): the ownership mark
    OUTPUT/eval.json            DATA, its class counts, and every run's figures and confusion matrix
    OUTPUT/eval.csv             one row per run: run, model, method, seed, top1, top5, n, partners, loss
    OUTPUT/per_class.csv        one row per run and class of DATA: run, class, n, correct, accuracy
    OUTPUT/confusion/<run>.png  each run's confusion matrix (rows: true class, columns: predicted class)
    OUTPUT/saliency.png         with ``saliency=N``: N test images (rows) x [the image, one Grad-CAM map per run]
    OUTPUT/layout.json          every file above (``--overwrite`` deletes only these; a rerun removes stale ones)

DATA's class folders are matched to a run's classes by name, so DATA may hold any subset of them, in any order.
Figures are computed with plain torch (a ``bincount`` confusion matrix, ``topk``), not torchmetrics: torchmetrics
is only a development dependency here (through lightning), and its per-class accuracy gives 0, not "absent", for
a class that DATA does not hold.

Example:
    >>> results = evaluate(["runs/none", "runs/diffcoremix"], "data/test", output="eval", saliency=8)  # doctest: +SKIP
    >>> [(r.name, round(r.top1, 3)) for r in results]  # doctest: +SKIP
    [('none', 0.712), ('diffcoremix', 0.741)]
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from diffcoremix.classifiers import run_labels
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.classnames import prompt_name
from diffcoremix.data.dataset import ClassFolderDataset
from diffcoremix.data.folder import DatasetListing, ImageItem
from diffcoremix.data.images import open_image
from diffcoremix.data.sources import usable_sources
from diffcoremix.devices import resolve_device
from diffcoremix.errors import ConfigError, DiffCoReMixError
from diffcoremix.manifest.layout import Layout, OutputFolder, OutputFolderError
from diffcoremix.manifest.ownership import open_output
from diffcoremix.seeds import generator_for
from diffcoremix.train.run import TrainedModel, load_run
from diffcoremix.train.transforms import for_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

COMMAND = "eval"
"""The ``command`` of the run record: an OUTPUT made by another command is refused."""
EVAL_JSON, EVAL_CSV, PER_CLASS_CSV = "eval.json", "eval.csv", "per_class.csv"
CONFUSION_DIR = "confusion"
SALIENCY_FILE = "saliency.png"
SALIENCY_TILE_PX = 160
"""Each tile of saliency.png is this many pixels wide and high (title included)."""
SALIENCY_HEADER_PX = 40
"""saliency.png's extra height for the column headers (run name and method)."""
TICK_LABELS_UP_TO = 40
"""Confusion matrices of more classes have index ticks instead of class names."""


class SaliencyError(DiffCoReMixError):
    """No Grad-CAM layer can be found for a model (its features are not a spatial map)."""


@dataclass(frozen=True)
class EvalResult:
    """One run's figures on DATA."""

    run: Path
    name: str
    """A short name of the run: its folder name (with parent folders when two runs share it)."""
    model: str
    method: str
    seed: int | None
    partners: str | None
    classes: tuple[str, ...]
    """The run's classes: the order of the confusion matrix."""
    top1: float
    top5: float
    """Top-k accuracy with k = ``top_k`` (5, or the number of classes when fewer)."""
    top_k: int
    loss: float
    """Mean cross-entropy."""
    n: int
    per_class: dict[str, float]
    """Accuracy of each class of DATA that holds images."""
    confusion: list[list[int]]
    """``confusion[i][j]``: images of class ``classes[i]`` predicted as ``classes[j]``."""

    @property
    def counts(self) -> dict[str, int]:
        """Images per class of DATA (the confusion matrix's row sums)."""
        return {c: sum(self.confusion[self.classes.index(c)]) for c in self.per_class}

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run), "name": self.name, "model": self.model, "method": self.method,
                "seed": self.seed, "partners": self.partners, "n": self.n, "top1": self.top1, "top5": self.top5,
                "top_k": self.top_k, "loss": self.loss, "per_class": self.per_class, "counts": self.counts,
                "classes": list(self.classes), "confusion": self.confusion}  # fmt: skip


def evaluate(
    runs: Sequence[str | Path],
    data: str | Path | DatasetListing,
    *,
    output: str | Path | None = None,
    saliency: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 0,
    progress: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> list[EvalResult]:
    """Top-1, top-5, loss, per-class accuracy and confusion matrix of each run on DATA; with ``output``, the files
    of the module docstring.

    Args:
        runs: finished training run folders.
        data: the test set (class folders), or a listing of part of it; each class in use must be a class of
            every run.
        output: the folder to write the figures and plots into (new, empty, or an earlier ``eval`` output).
        saliency: draw Grad-CAM maps of this many test images (seeded, stratified over classes) in
            ``output/saliency.png``.
        batch_size, device, workers: how the test images are fed (``device`` ``auto``: CUDA when available).
        progress: a progress bar over batches.
        seed: seeds the choice of the saliency images.
        overwrite: delete the files of an earlier ``eval`` in ``output`` first.

    Returns:
        One result per run, in the order given.

    Raises:
        ConfigError: a bad count, no run, a run given twice, or ``saliency`` without ``output``.
        DatasetError: DATA has no usable image, or a class the run does not know.
        RunError: a folder is not a finished training run.
        OutputFolderError: ``output`` overlaps DATA or a run, or holds files that ``eval`` did not make.
    """
    _check_counts(saliency=(saliency, 0), batch_size=(batch_size, 1), workers=(workers, 0))
    if not runs:
        raise ConfigError("runs", [], "at least one run folder")
    if saliency and output is None:
        raise ConfigError("output", None, "a folder when saliency > 0 (saliency.png is written there)")
    # Every image that decodes is evaluated; the others are named in one warning line (none usable: DatasetError).
    listing = usable_sources(data, scan=ScanConfig(min_side=1)).listing
    paths = [Path(r) for r in runs]
    names = run_names(paths)
    if output is not None:
        _check_output(Path(output), paths)
    trained = [load_run(p) for p in paths]
    labels = [run_labels(listing, t) for t in trained]  # every mismatch is found before any work
    device = resolve_device(device)
    with contextlib.ExitStack() as stack:
        # OUTPUT is checked and locked before the work; overwrite is ours to do (in _write_outputs): the shared
        # clear() would leave an empty confusion/ behind, and warn of it.
        folder = stack.enter_context(open_output(output, data=listing.root)) if output is not None else None
        results = [evaluate_model(t, listing, to_run, name=name, batch_size=batch_size, device=device,
                                  workers=workers, progress=progress)
                   for t, name, to_run in zip(trained, names, labels, strict=True)]  # fmt: skip
        if folder is not None:
            folder.write_run_record(listing.root, command=COMMAND, runs=[str(p.resolve()) for p in paths])
            _write_outputs(folder, listing, results, trained, labels, saliency=saliency, seed=seed, device=device,
                           overwrite=overwrite)  # fmt: skip
    return results


def _check_counts(**values: tuple[int, int]) -> None:
    for name, (value, least) in values.items():
        if value < least:
            raise ConfigError(name, value, f">= {least}")


def run_names(runs: Sequence[Path]) -> list[str]:
    """Short distinct names: each run's folder name, with as many parent folders as needed to tell them apart.

    Raises:
        ConfigError: the same run is given twice.
    """
    if len({r.resolve() for r in runs}) < len(runs):
        raise ConfigError("runs", [str(r) for r in runs], "distinct run folders")
    given = [r.absolute() for r in runs]  # as the user names them (a link keeps its own name)
    depth = 1
    while True:
        names = ["/".join(r.parts[-depth:]) for r in given]
        if len(set(names)) == len(names):
            return names
        depth += 1


def _check_output(output: Path, runs: Sequence[Path]) -> None:
    """OUTPUT may lie inside a run (``RUN/eval``), but it may not be a run, contain one, or be another command's."""
    out = output.resolve()
    for run in runs:
        if out == run.resolve() or out in run.resolve().parents:
            raise OutputFolderError(f"output {output} is or contains the run {run}: choose a folder of its own")
    record = OutputFolder(output).run_record()
    if record is not None and record.get("command") != COMMAND:
        raise OutputFolderError(f"output {output} is the output of another diffcoremix command: choose another folder")


def evaluate_model(
    trained: TrainedModel,
    listing: DatasetListing,
    to_run: torch.Tensor,
    *,
    name: str,
    batch_size: int = 256,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = False,
) -> EvalResult:
    """One run's figures on the images of ``listing`` (``to_run`` from :func:`run_labels`)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    classes = trained.classes
    k, top_k = len(classes), min(5, len(classes))
    loader = DataLoader(ClassFolderDataset(listing, for_run(trained.info)), batch_size=batch_size,
                        num_workers=workers)  # fmt: skip
    model = trained.model.to(device).eval()
    confusion = torch.zeros(k * k, dtype=torch.long)
    in_top_k, loss_sum = 0, 0.0
    try:
        with torch.inference_mode():
            for images, labels in tqdm(loader, desc=f"eval {name}", unit="batch", disable=not progress):
                target = to_run[labels].to(device)  # DATA's label -> the run's class index, by name
                logits = model(images.to(device)).float()
                loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
                in_top_k += int((logits.topk(top_k, dim=1).indices == target[:, None]).any(dim=1).sum())
                confusion += torch.bincount(target * k + logits.argmax(dim=1), minlength=k * k).cpu()
    finally:
        model.cpu()  # a TrainedModel lives on the CPU; only the model being evaluated holds device memory
    matrix = confusion.view(k, k)
    n = int(matrix.sum())
    rows = matrix.sum(dim=1)
    per_class = {c: int(matrix[i, i]) / int(rows[i]) for i, c in enumerate(classes) if rows[i] > 0}
    info = trained.info
    return EvalResult(
        run=trained.run, name=name, model=str(info.get("model")), method=str(info.get("method", "")),
        seed=info.get("seed"), partners=info.get("partners"), classes=classes,
        top1=float(matrix.trace()) / n, top5=in_top_k / n, top_k=top_k, loss=loss_sum / n, n=n,
        per_class=per_class, confusion=matrix.tolist(),
    )  # fmt: skip


# --- Grad-CAM -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CamTarget:
    """The layer whose activations and gradients Grad-CAM weighs, and how to make its output ``(B, C, h, w)``."""

    layer: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None


def cam_target(model: nn.Module, example: torch.Tensor) -> CamTarget:
    """The Grad-CAM layer of a classifier.

    ``resnet20``: its last block (``layer3[-1]``). A timm CNN (resnet*, mobilenet*, efficientnet*, convnext*...):
    the module that produces ``forward_features``' ``(B, C, h, w)`` map, found by hooking every module during one
    ``forward_features`` pass of ``example`` (the last module to finish with an output of that shape). A timm ViT
    (``(B, tokens, C)`` features, ``blocks[-1].norm1``): the last block's first norm, its patch tokens reshaped to
    a square ``(B, C, h, w)`` grid (the prefix tokens dropped), as grad-cam's ViT tutorial does.

    Raises:
        SaliencyError: the features are neither (swin's ``(B, h, w, C)`` maps, for example).
    """
    from diffcoremix.embedders.resnet20 import ResNet20

    if isinstance(model, ResNet20):
        return CamTarget(model.layer3[-1])
    forward_features = getattr(model, "forward_features", None)
    if not callable(forward_features):
        raise SaliencyError(f"no Grad-CAM layer for {type(model).__name__}: it has no forward_features")
    finished: list[tuple[nn.Module, torch.Size]] = []

    def record(module: nn.Module, inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            finished.append((module, out.shape))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            features = forward_features(example)
    finally:
        for hook in hooks:
            hook.remove()
    channels = getattr(model, "num_features", None)
    last = next((m for m, shape in reversed(finished) if shape == features.shape), None)
    if features.ndim == 4 and features.shape[1] == channels and last is not None:
        return CamTarget(last)
    blocks, prefix = getattr(model, "blocks", None), getattr(model, "num_prefix_tokens", None)
    if features.ndim == 3 and isinstance(prefix, int) and isinstance(blocks, nn.Sequential | nn.ModuleList):
        side, norm = math.isqrt(features.shape[1] - prefix), getattr(blocks[-1], "norm1", None)
        if side * side == features.shape[1] - prefix and isinstance(norm, nn.Module):
            return CamTarget(norm, _tokens_to_map(prefix, side))
    raise SaliencyError(
        f"no Grad-CAM layer for {type(model).__name__}: its features of shape {tuple(features.shape)} are not a "
        "(B, C, h, w) map nor ViT tokens"
    )


def _tokens_to_map(prefix: int, side: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def gradcam_maps(
    model: nn.Module, images: torch.Tensor, labels: Sequence[int], target: CamTarget | None = None
) -> np.ndarray:
    """Grad-CAM maps of the given classes (the true ones: what made the model see the class it should see).

    Args:
        model: the classifier, on the device of ``images``.
        images: ``(B, C, H, W)`` normalised as the model expects.
        labels: the class index (of the model's outputs) to explain, per image.
        target: the layer (see :func:`cam_target`; found from ``images[:1]`` when not given).

    Returns:
        ``(B, H, W)`` float32 maps in [0, 1] (each scaled to its own maximum).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    target = target or cam_target(model, images[:1])
    # grad-cam 1.5.x API: GradCAM(model=, target_layers=[...], reshape_transform=) takes the device from the
    # model's parameters (the use_cuda= argument of older versions is gone), and the classes to explain are target
    # objects, ClassifierOutputTarget(index), not the integer target_category of versions before 1.3.
    cam = GradCAM(model=model, target_layers=[target.layer], reshape_transform=target.reshape)
    with torch.enable_grad(), cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    return np.asarray(maps, dtype=np.float32)


def choose_images(listing: DatasetListing, count: int, seed: int) -> list[ImageItem]:
    """``count`` images spread over the classes: classes in a seeded order, one image of each in turn (each class's
    images in a seeded order), until ``count`` or every image is taken."""
    generator = generator_for(seed, "saliency")
    groups = [items for items in listing.by_class().values() if items]
    queues = []
    for g in torch.randperm(len(groups), generator=generator).tolist():
        queues.append([groups[g][i] for i in torch.randperm(len(groups[g]), generator=generator).tolist()])
    chosen: list[ImageItem] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


@dataclass(frozen=True)
class SaliencyColumn:
    """One run's column of saliency.png."""

    header: str
    maps: np.ndarray | None
    """``(N, H, W)`` Grad-CAM maps of the true classes, in [0, 1]; None when the model has no Grad-CAM layer."""
    tiles: np.ndarray
    """``(N, H, W, 3)`` uint8: the maps over the images (or the images alone)."""
    predicted: list[str]
    """The predicted class folder of each image."""
    correct: list[bool]


def saliency_column(trained: TrainedModel, items: Sequence[ImageItem], to_run: torch.Tensor, *, header: str = "",
                    device: str = "cpu") -> SaliencyColumn:  # fmt: skip
    """Grad-CAM maps of one run for ``items``, each of its true class (``to_run`` from :func:`run_labels`).

    A model without a Grad-CAM layer (see :func:`cam_target`) is logged as a warning; its column shows the images.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    transform = for_run(trained.info)
    images = torch.stack([transform(open_image(item.path)) for item in items]).to(device)
    labels = [int(to_run[item.label]) for item in items]
    model = trained.model.to(device).eval()
    try:
        with torch.no_grad():
            predicted = model(images).argmax(dim=1).tolist()
        rgb = _unnormalise(images.cpu(), trained.info)
        maps: np.ndarray | None = None
        try:
            maps = gradcam_maps(model, images, labels)
            tiles = np.stack([show_cam_on_image(rgb[i], maps[i], use_rgb=True) for i in range(len(items))])
        except SaliencyError as err:
            logger.warning("saliency: %s; its column shows the images alone", err)
            tiles, header = (rgb * 255).round().astype(np.uint8), header + " (no map)"
    finally:
        model.cpu()
    correct = [p == t for p, t in zip(predicted, labels, strict=True)]
    return SaliencyColumn(header, maps, tiles, [trained.classes[p] for p in predicted], correct)


def _unnormalise(images: torch.Tensor, info: dict[str, Any]) -> np.ndarray:
    """``(B, C, H, W)`` normalised -> ``(B, H, W, 3)`` float32 in [0, 1]."""
    mean = torch.tensor(info["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info["std"], dtype=torch.float32).view(1, -1, 1, 1)
    rgb = (images.float() * std + mean).clamp(0, 1).expand(-1, 3, -1, -1)
    return rgb.permute(0, 2, 3, 1).numpy().astype(np.float32)


def saliency_size(images: int, runs: int) -> tuple[int, int]:
    """The (width, height) in pixels of saliency.png."""
    return (runs + 1) * SALIENCY_TILE_PX, images * SALIENCY_TILE_PX + SALIENCY_HEADER_PX


def saliency_figure(items: Sequence[ImageItem], first: np.ndarray, columns: Sequence[SaliencyColumn]) -> Figure:
    """Rows: images; columns: the image with its true class, then each run's map titled with its prediction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = saliency_size(len(items), len(columns))
    figure = Figure(figsize=(width / 100, height / 100), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    # One subfigure per column, so that its header (black) sits above the tiles' titles (coloured by correctness).
    parts = figure.subfigures(1, len(columns) + 1, squeeze=False)[0]
    parts[0].suptitle("image\n", fontsize=8)
    for row, axes in enumerate(parts[0].subplots(len(items), 1, squeeze=False)[:, 0]):
        _tile(axes, first[row], f"true: {_short(prompt_name(items[row].class_folder))}", "black")
    for part, column in zip(parts[1:], columns, strict=True):
        part.suptitle(column.header, fontsize=8, parse_math=False)
        for row, axes in enumerate(part.subplots(len(items), 1, squeeze=False)[:, 0]):
            color = "#2e7d32" if column.correct[row] else "#c62828"
            _tile(axes, column.tiles[row], f"pred: {_short(prompt_name(column.predicted[row]))}", color)
    return figure


def _short(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tile(axes: Axes, image: np.ndarray, title: str, color: str) -> None:
    axes.imshow(image, interpolation="bilinear")
    axes.set_xticks([])
    axes.set_yticks([])
    # Class and run names are user text: no mathtext ("$...$" would be parsed, and may not parse).
    axes.set_title(title, fontsize=7, color=color, parse_math=False)


# --- confusion matrices ---------------------------------------------------------------------------------------------


def confusion_file_name(name: str) -> str:
    """``confusion/<run name>.png``, ``%`` written ``%25`` and ``/`` (of a name with parent folders) ``%2F``."""
    return f"{CONFUSION_DIR}/" + name.replace("%", "%25").replace("/", "%2F") + ".png"


def confusion_figure(result: EvalResult) -> Figure:
    """The confusion matrix, coloured by the share of each true class, counts written in up to 15 classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(result.confusion)
    k = len(matrix)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.22 * k + 2.5), 12.0)
    figure = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(shown, ax=axes, shrink=0.8, label="share of the true class")
    if k <= TICK_LABELS_UP_TO:
        names = [_short(prompt_name(c), 24).replace("$", r"\$") for c in result.classes]
        size = 8 if k <= 20 else 6
        axes.set_xticks(range(k), names, rotation=90, fontsize=size)
        axes.set_yticks(range(k), names, fontsize=size)
    if k <= 15:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                axes.text(j, i, str(count), ha="center", va="center", fontsize=7,
                          color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    axes.set_xlabel("predicted class" + ("" if k <= TICK_LABELS_UP_TO else " (index, see eval.json)"))
    axes.set_ylabel("true class")
    axes.set_title(f"{result.name}: top-1 {result.top1:.1%} of {result.n} images", parse_math=False)
    return figure


# --- files ----------------------------------------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_outputs(folder: OutputFolder, listing: DatasetListing, results: Sequence[EvalResult],
                   trained: Sequence[TrainedModel], labels: Sequence[torch.Tensor], *, saliency: int, seed: int,
                   device: str, overwrite: bool) -> None:  # fmt: skip
    """Write the files and delete an earlier eval's that are not among them (all of them first, with
    ``overwrite``). The layout record names each file with its content before it is written, so a killed run's files
    are ours too, and a file replaced since is left in place (one warning)."""
    out = folder.path
    layout = Layout(out, damaged="reset")
    if overwrite:
        layout.delete(layout.names())
    counts = {c: len(items) for c, items in listing.by_class().items()}
    document = {"data": str(listing.root.resolve()), "n": len(listing), "counts": counts,
                "runs": [r.to_dict() for r in results]}  # fmt: skip
    files = {
        EVAL_JSON: (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode(),
        EVAL_CSV: _csv(
            ("run", "model", "method", "seed", "top1", "top5", "n", "partners", "loss"),
            [(r.run, r.model, r.method, r.seed, r.top1, r.top5, r.n, r.partners, r.loss) for r in results],
        ).encode(),
        PER_CLASS_CSV: _csv(
            ("run", "class", "n", "correct", "accuracy"),
            [
                (r.run, c, r.counts[c], r.confusion[r.classes.index(c)][r.classes.index(c)], acc)
                for r in results
                for c, acc in r.per_class.items()
            ],
        ).encode(),
        **{confusion_file_name(r.name): _png(confusion_figure(r)) for r in results},
    }
    if saliency:
        items = choose_images(listing, saliency, seed)
        runs = zip(trained, results, labels, strict=True)
        columns = [saliency_column(t, items, to_run, header=f"{r.name}\n{r.method}", device=device)
                   for t, r, to_run in runs]  # fmt: skip
        first = _unnormalise(torch.stack([for_run(trained[0].info)(open_image(i.path)) for i in items]),
                             trained[0].info)  # fmt: skip
        files[SALIENCY_FILE] = _png(saliency_figure(items, first, columns))
    for relpath, data in files.items():
        layout.write(relpath, data)
    layout.delete(layout.names() - set(files))  # an earlier eval's files that this one does not write (of other runs)
    layout.warn_changed()
    confusion = out / CONFUSION_DIR
    if confusion.is_dir() and not confusion.is_symlink() and not any(confusion.iterdir()):
        confusion.rmdir()
