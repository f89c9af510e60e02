"""`evaluate` and the `eval` command: the real CIFAR-10 ResNet-20 on real test photos agrees with a plain argmax
computed here, the figures hold together (per-class accuracies average to top-1, confusion rows sum to the class
counts), a hand-made model gives the figures worked out by hand, DATA's classes are matched to the run's by name,
Grad-CAM explains the true class and depends on the model, saliency.png has the documented size, and bad input is
one line with exit 2."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from diffcoremix.cli.eval_command import EVAL_COMMAND
from diffcoremix.data.folder import list_images
from diffcoremix.manifest.layout import OutputFolder, OutputFolderError
from diffcoremix.seeds import seeded_init
from diffcoremix.train.evaluation import (
    SALIENCY_HEADER_PX,
    SALIENCY_TILE_PX,
    EvalResult,
    SaliencyError,
    cam_target,
    choose_images,
    evaluate,
    gradcam_maps,
    run_labels,
    saliency_column,
)
from diffcoremix.train.models import create_model
from diffcoremix.train.run import load_run, read_summary

from .helpers import make_class_folders, run_cli

pytestmark = pytest.mark.shared_data

PER_CLASS = 30
"""Test images per CIFAR-10 class: the first 30 of each (ResNet-20 gets 81.3% of these 300)."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""The normalisation the shared ResNet-20 was trained with (../shared/models/README.md)."""


def _link_subset(source: Path, root: Path, classes: list[str] | None = None, per_class: int = PER_CLASS) -> Path:
    """A class-folder dataset of symbolic links to the first ``per_class`` images of ``classes`` of ``source``."""
    for item in list_images(source).subset(classes or (), per_class).items:
        (root / item.class_folder).mkdir(parents=True, exist_ok=True)
        (root / item.relpath).symlink_to(item.path.resolve())
    return root


def _save_run(run: Path, model: torch.nn.Module, classes: list[str], *, method: str = "none",
              mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> Path:  # fmt: skip
    """A finished run's model.pt, in the format `train` writes."""
    run.mkdir(parents=True)
    info = {"model": "resnet20", "classes": classes, "img_size": 32, "mean": list(mean), "std": list(std),
            "transform": "cifar", "method": method, "partners": None, "seed": 0}  # fmt: skip
    torch.save({"info": info, "state_dict": model.state_dict()}, run / "model.pt")
    return run


@pytest.fixture(scope="module")
def checkpoint(shared_data: Path) -> Path:
    return shared_data.parent / "models" / "resnet20_cifar10.th"


@pytest.fixture(scope="module")
def cifar(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _link_subset(shared_data / "cifar10" / "test", tmp_path_factory.mktemp("cifar") / "test")


@pytest.fixture(scope="module")
def runs(cifar: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The real CIFAR-10 ResNet-20, and a random one (seeded)."""
    root, classes = tmp_path_factory.mktemp("runs"), list(list_images(cifar).classes)
    real = _save_run(root / "real", create_model("resnet20", 10, init=checkpoint), classes)
    with seeded_init(1):
        random = _save_run(root / "random", create_model("resnet20", 10), classes, method="mixup")
    return real, random


@pytest.fixture(scope="module")
def evaluated(
    runs: tuple[Path, Path], cifar: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[EvalResult], Path]:
    out = tmp_path_factory.mktemp("eval") / "out"
    return evaluate(list(runs), cifar, output=out, saliency=4, batch_size=128), out


@pytest.fixture(scope="module")
def plain(cifar: Path, checkpoint: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels and logits computed here without the library's data path: PIL, numpy, the checkpoint."""
    listing = list_images(cifar)
    pixels = np.stack(
        [np.asarray(Image.open(item.path).convert("RGB"), dtype=np.float32) / 255 for item in listing.items]
    )
    images = torch.from_numpy((pixels - IMAGENET_MEAN) / IMAGENET_STD).float().permute(0, 3, 1, 2)
    labels = torch.tensor([item.label for item in listing.items])
    with torch.no_grad():
        logits = create_model("resnet20", 10, init=checkpoint).eval()(images)
    return images, labels, logits


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """The real entry point, ``main(argv)``, with the eval command registered (if main does not list it yet)."""
    from diffcoremix.cli import main

    if all(command.name != "eval" for command in main.ALL_COMMANDS):
        monkeypatch.setattr(main, "ALL_COMMANDS", (*main.ALL_COMMANDS, EVAL_COMMAND))
    return lambda *args: main.main([str(a) for a in args])


def test_the_real_resnet20_is_far_above_chance_and_agrees_with_a_plain_argmax(
    evaluated: tuple[list[EvalResult], Path], plain: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    (real, random), _ = evaluated
    _, labels, logits = plain
    assert real.n == 10 * PER_CLASS
    assert real.top1 >= 0.75  # 0.813 measured; chance is 0.1, and the random network gets about that
    assert random.top1 < 0.3
    assert real.top1 == int((logits.argmax(dim=1) == labels).sum()) / real.n
    assert real.top5 == int((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum()) / real.n
    assert real.top5 > real.top1
    assert real.loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-4)
    expected = torch.zeros(10, 10, dtype=torch.long).index_put_((labels, logits.argmax(dim=1)), torch.tensor(1),
                                                                accumulate=True)  # fmt: skip
    assert real.confusion == expected.tolist()


def test_per_class_accuracies_average_to_top1_and_confusion_rows_sum_to_the_class_counts(
    evaluated: tuple[list[EvalResult], Path],
) -> None:
    for result in evaluated[0]:
        assert [sum(row) for row in result.confusion] == [PER_CLASS] * 10
        assert list(result.per_class) == list(result.classes)
        weighted = sum(acc * result.counts[c] for c, acc in result.per_class.items()) / result.n
        assert weighted == pytest.approx(result.top1)
        assert result.per_class == {c: result.confusion[i][i] / PER_CLASS for i, c in enumerate(result.classes)}


def test_a_hand_made_model_gives_the_figures_worked_out_by_hand(tmp_path: Path) -> None:
    # Logits = the bias alone: every image is predicted "a", and the top 5 of 6 classes leave out "f" only.
    model = create_model("resnet20", 6)
    bias = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.copy_(torch.tensor(bias))
    run = _save_run(tmp_path / "run", model, ["a", "b", "c", "d", "e", "f"])
    # DATA holds 3 of the 6 classes: its labels (a 0, d 1, f 2) must be mapped to the run's (0, 3, 5) by name.
    data = make_class_folders(tmp_path / "data", {"a": 2, "d": 1, "f": 3}, size=32)
    (result,) = evaluate([run], data)
    assert (result.n, result.top1, result.top5, result.top_k) == (6, 2 / 6, 3 / 6, 5)
    assert result.per_class == {"a": 1.0, "d": 0.0, "f": 0.0}
    assert result.confusion == [[2, 0, 0, 0, 0, 0], [0] * 6, [0] * 6, [1, 0, 0, 0, 0, 0], [0] * 6,
                                [3, 0, 0, 0, 0, 0]]  # fmt: skip
    log_z = math.log(sum(math.exp(b) for b in bias))
    assert result.loss == pytest.approx((2 * (log_z - 5) + (log_z - 2) + 3 * (log_z - 0)) / 6, rel=1e-5)


def test_a_test_set_of_some_of_the_runs_classes_is_matched_by_name(
    evaluated: tuple[list[EvalResult], Path], runs: tuple[Path, Path], shared_data: Path, tmp_path: Path
) -> None:
    two = _link_subset(shared_data / "cifar10" / "test", tmp_path / "two", ["cat", "ship"])
    (full, _), _ = evaluated
    (result,) = evaluate([runs[0]], two)
    assert result.n == 2 * PER_CLASS
    assert result.per_class == {"cat": full.per_class["cat"], "ship": full.per_class["ship"]}
    for cls in ("cat", "ship"):
        i = full.classes.index(cls)
        assert result.confusion[i] == full.confusion[i]


def test_the_files_and_saliency_png_of_two_runs(evaluated: tuple[list[EvalResult], Path]) -> None:
    results, out = evaluated
    with Image.open(out / "saliency.png") as png:  # 4 images (rows) x [image, 2 runs]
        assert png.size == (3 * SALIENCY_TILE_PX, 4 * SALIENCY_TILE_PX + SALIENCY_HEADER_PX)
    layout = set(json.loads((out / "layout.json").read_text())["files"])
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert layout == present - {"run.json", "layout.json"}
    assert layout == {"eval.json", "eval.csv", "per_class.csv", "confusion/real.png", "confusion/random.png",
                      "saliency.png"}  # fmt: skip
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert [(r["method"], float(r["top1"]), float(r["top5"]), int(r["n"])) for r in rows] == [
        (r.method, r.top1, r.top5, r.n) for r in results
    ]
    assert len(list(csv.DictReader((out / "per_class.csv").open()))) == 20
    document = json.loads((out / "eval.json").read_text())
    assert document["counts"] == {c: PER_CLASS for c in results[0].classes}
    assert [r["confusion"] for r in document["runs"]] == [r.confusion for r in results]
    assert (OutputFolder(out).run_record() or {}).get("command") == "eval"


def test_grad_cam_explains_the_true_class_and_depends_on_the_model(
    runs: tuple[Path, Path],
    cifar: Path,
    plain: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    shared_data: Path,
    tmp_path: Path,
) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images, labels, logits = plain  # of every class: labels are the run's class indices
    predicted = logits.argmax(dim=1)
    # Cat and ship images the real network gets wrong, from a DATA of those two classes (labels 0 and 1 there).
    two = list_images(_link_subset(shared_data / "cifar10" / "test", tmp_path / "two", ["cat", "ship"]))
    where = {item.relpath: i for i, item in enumerate(list_images(cifar).items)}
    wrong = [i for i in (where[item.relpath] for item in two.items) if predicted[i] != labels[i]][:3]
    items = [item for item in two.items if where[item.relpath] in wrong]
    real, random = load_run(runs[0]), load_run(runs[1])
    column = saliency_column(real, items, run_labels(two, real))
    assert column.predicted == [real.classes[i] for i in predicted[wrong]]
    assert column.correct == [False] * 3

    def direct(targets: torch.Tensor) -> np.ndarray:
        model = load_run(runs[0]).model
        with GradCAM(model=model, target_layers=[model.layer3[-1]]) as cam:
            maps: np.ndarray = cam(
                input_tensor=images[wrong], targets=[ClassifierOutputTarget(int(t)) for t in targets]
            )
            return maps

    assert column.maps is not None
    np.testing.assert_allclose(column.maps, direct(labels[wrong]), atol=2e-3)
    assert np.abs(column.maps - direct(predicted[wrong])).mean() > 0.05
    other = saliency_column(random, items, run_labels(two, random))
    assert other.maps is not None
    assert np.abs(column.maps - other.maps).mean() > 0.05


def test_the_saliency_images_are_seeded_and_spread_over_the_classes(cifar: Path) -> None:
    listing = list_images(cifar)
    chosen = choose_images(listing, 15, seed=0)
    assert chosen == choose_images(listing, 15, seed=0)
    assert chosen != choose_images(listing, 15, seed=1)
    assert len({i.relpath for i in chosen}) == 15
    assert sorted(Counter(i.class_folder for i in chosen).values()) == [1] * 5 + [2] * 5
    assert len(choose_images(listing, 500, seed=0)) == len(listing)  # all there are


@pytest.mark.parametrize(
    ("name", "kwargs", "layer"),
    [
        ("resnet18", {}, "layer4"),
        ("mobilenetv3_small_050", {}, "blocks"),
        ("test_efficientnet", {}, "bn2"),
        ("test_convnext", {}, "norm_pre"),
        ("test_vit", {"img_size": 64}, "blocks.5.norm1"),
    ],
)
def test_the_grad_cam_layer_of_each_timm_family(name: str, kwargs: dict[str, object], layer: str) -> None:
    import timm

    with seeded_init(0):
        model = timm.create_model(name, num_classes=3, **kwargs).eval()
        images = torch.randn(2, 3, 64, 64)
    target = cam_target(model, images[:1])
    assert next(n for n, m in model.named_modules() if m is target.layer) == layer
    maps = gradcam_maps(model, images, [0, 2], target)
    assert maps.shape == (2, 64, 64)
    assert np.isfinite(maps).all()
    assert maps.std() > 0.05


def test_a_model_without_a_spatial_map_has_no_grad_cam_layer() -> None:
    import timm

    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, embed_dim=24, depths=(1, 1, 1, 1),
                             num_heads=(1, 1, 1, 1))  # fmt: skip
    with pytest.raises(SaliencyError, match=r"\(1, 7, 7, 24\)|not a \(B, C, h, w\) map"):
        cam_target(swin.eval(), torch.zeros(1, 3, 224, 224))


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two bias-only runs of classes a, b, c (one predicts a, the other c) and a DATA of those classes."""
    made = []
    for name, bias in (("one", [1.0, 0.0, 0.0]), ("two", [0.0, 0.0, 1.0])):
        model = create_model("resnet20", 3)
        with torch.no_grad():
            model.linear.weight.zero_()
            model.linear.bias.copy_(torch.tensor(bias))
        made.append(_save_run(tmp_path / name, model, ["a", "b", "c"]))
    return made[0], made[1], make_class_folders(tmp_path / "data", {"a": 2, "b": 2, "c": 2}, size=32)


def test_the_cli_prints_a_table_and_needs_output_for_several_runs_or_saliency(
    cli: Callable[..., int], tiny: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    one, two, data = tiny
    assert cli("eval", one, "--data", data) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "top-1", "top-3", "loss", "n"]
    assert lines[1].split()[:3] == ["one", "33.33%", "100.00%"]
    for args in ([one, two], [one, "--saliency", "2"]):
        assert cli("eval", *args, "--data", data) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "--output must be a folder with --saliency or several RUNs" in err


def test_unknown_class_in_data_is_one_line_with_exit_2(
    cli: Callable[..., int], tiny: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, _, data = tiny
    make_class_folders(data, {"zebra": 1}, size=32)
    assert cli("eval", one, "--data", data, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "class folder 'zebra'" in err
    assert "not a class of the run" in err
    assert not (tmp_path / "out").exists()


def test_output_inside_data_a_run_or_another_commands_folder_is_refused(
    cli: Callable[..., int], tiny: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, _, data = tiny
    assert cli("eval", one, "--data", data, "-o", data / "eval") == 2
    assert "inside the dataset" in capsys.readouterr().err
    assert not (data / "eval").exists()
    with pytest.raises(OutputFolderError, match="is or contains the run"):
        evaluate([one], data, output=one)
    other = tmp_path / "generated"
    other.mkdir()
    OutputFolder(other).write_run_record(data)  # a generate output's record
    with pytest.raises(OutputFolderError, match="output of another diffcoremix command"):
        evaluate([one], data, output=other, overwrite=True)
    assert (other / "run.json").exists()


def test_a_rerun_removes_the_earlier_evals_stale_files_and_overwrite_keeps_foreign_ones(
    tiny: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    one, two, data = tiny
    out = tmp_path / "out"
    evaluate([one, two], data, output=out, saliency=2)
    assert {p.name for p in (out / "confusion").iterdir()} == {"one.png", "two.png"}
    evaluate([one], data, output=out)  # no saliency, one run: the others' files are stale
    assert {p.name for p in (out / "confusion").iterdir()} == {"one.png"}
    assert not (out / "saliency.png").exists()
    (out / "notes.txt").write_text("mine")
    evaluate([two], data, output=out, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "confusion/two.png", "eval.csv", "eval.json", "layout.json", "notes.txt", "per_class.csv", "run.json"
    ]  # fmt: skip


def test_eval_of_a_run_made_by_the_train_command_matches_its_own_test_figures(
    cli: Callable[..., int], tmp_path: Path
) -> None:
    data, run = make_class_folders(tmp_path / "data", {"a": 8, "b": 8, "c": 8}, size=32), tmp_path / "run"
    result = run_cli("train", data, "--model", "resnet20", "--method", "none", "--max-steps", "4", "-b", "8",
                     "--img-size", "32", "-o", run, "--test", data)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert cli("eval", run, "--data", data, "-o", tmp_path / "eval", "--saliency", "3") == 0
    (figures,) = json.loads((tmp_path / "eval" / "eval.json").read_text())["runs"]
    test = read_summary(run)["test"]
    assert (figures["top1"], figures["top5"], figures["n"]) == (test["top1"], test["top5"], test["n"])
    assert figures["loss"] == pytest.approx(test["loss"], rel=1e-5)
    with Image.open(tmp_path / "eval" / "saliency.png") as png:
        assert png.size == (2 * SALIENCY_TILE_PX, 3 * SALIENCY_TILE_PX + SALIENCY_HEADER_PX)
