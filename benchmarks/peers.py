"""The peers under one recipe (issue 28): the commands of ``train_evidence.py --tables peers,peers-flowers`` and their
tables.

**CIFAR-10** (``peers``): 100 training images per class, the CIFAR ResNet-20 from random initialisation, 400 optimizer
steps of 128 images, the 10,000 test images, one torch thread per run (``--config cifar --max-steps 400``); every
synthetic set is made by the tiny generator fine-tuned on the same images (``generation_quality.py``), one counterpart
per training image (an equal generation budget), with the ResNet-20 of ``../shared/models`` as the filter's embedder:

- ``text``: the text counterparts of ``generation_quality.py``, filtered by the prototype rule at its calibrated
  threshold (0.860); the ``diffcoremix`` recipe's set, and the counterparts of the usage-mode rows (the best row of the
  counterparts table, ``counterpart_table.py``: +2.6 over ``none``);
- one ``augment --recipe R`` set per other recipe (``OUT/cifar10/synth/R``). The peers run no filter (every generation
  accepted, each still scored, so its copy share is known). ``diffusemix`` needs an InstructPix2Pix model; offline the
  only one is the tiny random-weight edit model, whose edits are noise, so its set is img2img at strength 0.5 from the
  fine-tuned generator with DiffuseMix's style prompts (``--counterpart img2img --strength 0.5``), then DiffuseMix's
  halves-and-fractal combination in training. ``diffcoremix+`` uses inpainting with the Grad-CAM subject masks of a
  ResNet-20 trained on the same images (``generation_quality.py``'s ``classifier``), the calibrated threshold and the
  copy bound 0.975.

**Flowers-102** (``peers-flowers``): the official 10 training images per class, the 1,020 test images of
``../shared/data``; timm's ``resnet10t`` from random initialisation at 64 px, 240 steps of 64 images (the recipe of
``train_evidence.py --tables flowers102``). No generator fine-tuned on Flowers fits this CPU's budget (the CIFAR one
took 43 minutes at 32 px on 1,000 images; 64 px costs about four times as much per step), so every set is the tiny
preset's, **random weights**: ``augment --recipe R --preset tiny`` at 64 px (``diffusemix`` on the tiny edit model, as
its recipe asks), the default tiny embedder. Their images are noise: the table measures what each recipe's way of
using synthetic images costs or gains when the images carry no class content, the lower bound of every row.

**Records.** Run folders are work files (``benchmarks/.work/``, not committed), and a new session may get another
machine, so what the runs measured is kept in ``benchmarks/results/peers_<dataset>.<machine>.json``, one record per
kind of machine (CPU, its vector unit, torch): per row and seed, top-1, top-5 and the run's step time; per synthetic
set its figures; the side-by-side overhead. A seeded one-thread run gives the same accuracy on the same kind of machine
but not on another (on 2026-12-07, ``none`` seed 3 gave 46.77 on an AVX-512 AMD EPYC and 47.88 on an AVX2 one), so
the seeds of one table come from one record: a rerun adds the seeds it trained to its machine's record, and a run
that the record already holds must give the recorded top-1 exactly, else the table stops and says which.
``python benchmarks/peers.py --record FILE`` prints a committed record without run folders. The first CIFAR-10 table
(2026-12-07) was published before records named their machine; every one of its runs repeated to the hundredth on an
AVX-512 AMD EPYC with torch 2.14.1, whose record now holds all five seeds of every row.

The table pairs each row with ``none`` and with ``diffcoremix`` by seed (mean difference and its 95% t-interval, as
``compare`` computes them), and adds the overhead per step over ``none`` measured side by side on a quiet machine
(``python benchmarks/peers.py OUT --overhead``: interleaved rounds of 20 steps of every row, the median step time; in
parentheses when only the runs' own step times are there, which the machine's load makes noise), the generation
seconds per accepted image (the manifest's per-image share of its batch's wall time, every attempt, over the accepted
images) and the copy share of the accepted set (nearest real training image's cosine above 0.975 in the filter's
embedder: ``nearest_real_score``). ``benchmarks/figures/peers_overhead_accuracy.png`` (the paper's Fig. 4 for the
peers) plots top-1 against the side-by-side overhead.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from common import REPO, shared_data  # benchmarks/common.py

WORK = REPO / "benchmarks" / ".work" / "generation_quality"
RESULTS = REPO / "benchmarks" / "results"
COPY_CUT = 0.975
THRESHOLD = "0.8603317079422172"
"""The prototype rule's calibrated threshold for the CIFAR-10 text counterparts (``generation_quality.py``)."""
RECIPES = ("diffusemix", "diff-mix", "da-fusion", "real-guidance", "diffcoremix+")
"""The recipes of the ``recipes`` compare folder (``diffcoremix``'s set is the text set, trained in ``text-base``)."""
BASELINES = ("none", "mixup", "cutmix")


class Row(NamedTuple):
    name: str
    folder: str
    """The compare folder under ``OUT/<dataset>`` that trains it."""
    label: str
    """Its run label there."""
    synthetic: str | None
    """The synthetic set it trains with: ``text`` or a recipe's name; None for the baselines."""


@dataclass(frozen=True)
class Study:
    """One dataset's table: its rows, its compare recipe and where its record is kept."""

    key: str
    """The folder under OUT and the record's name."""
    title: str
    train: str
    """The training and test folders under ``../shared/data``."""
    test: str
    recipe: tuple[str, ...]
    """compare's recipe flags (the step budget included)."""
    recipes: tuple[str, ...]
    """The recipes of its ``recipes`` compare folder."""
    rows: tuple[Row, ...]
    copies: bool = True
    """Whether the filter's embedder can tell a copy (the tiny preset's random one cannot: no copy share)."""

    def record(self, machine: dict[str, str]) -> Path:
        """The record of the runs made on one kind of machine."""
        tag = re.sub(r"[^a-z0-9.]+", "-", f"{machine['cpu']} {machine['vector']} torch {machine['torch']}".lower())
        return RESULTS / f"peers_{self.key}.{tag.strip('-')}.json"

    @property
    def figure(self) -> Path:
        suffix = "" if self.key == "cifar10" else f"_{self.key}"
        return REPO / "benchmarks" / "figures" / f"peers_overhead_accuracy{suffix}.png"

    def text_set(self, out: Path) -> Path:
        """The text counterparts of the ``diffcoremix`` and usage-mode rows."""
        return WORK / "generated" if self.key == "cifar10" else out / self.key / "synth" / "diffcoremix"

    def set_folder(self, out: Path, name: str) -> Path:
        return self.text_set(out) if name == "text" else out / self.key / "synth" / name


def _rows(recipes: tuple[str, ...], text_folder: str) -> tuple[Row, ...]:
    return (
        Row("none", "base", "none", None),
        Row("mixup", "base", "mixup", None),
        Row("cutmix", "base", "cutmix", None),
        *(Row(r, "recipes", f"recipe:{r}", r) for r in recipes if r != "diffcoremix+"),
        Row("diffcoremix", text_folder, "diffcoremix", "text"),
        *(Row(r, "recipes", f"recipe:{r}", r) for r in recipes if r == "diffcoremix+"),
        Row("fc, text", text_folder, "fc", "text"),
        Row("fr, text", "text", "fr", "text"),
        Row("lrr p 0.5, text", "text", "lrr", "text"),
        Row("grr p 0.1, text", "text-grr", "grr", "text"),
    )


CIFAR10 = Study(
    key="cifar10",
    title="CIFAR-10, 100/class, ResNet-20, 400 steps",
    train="cifar10/train",
    test="cifar10/test",
    recipe=("--config", "cifar", "--max-steps", "400"),
    recipes=RECIPES,
    rows=_rows(RECIPES, "text-base"),
)
FLOWERS_RECIPES = ("diffusemix", "diff-mix", "da-fusion", "real-guidance")
FLOWERS = Study(
    key="flowers102",
    title="Flowers-102, 10/class, resnet10t at 64 px, 240 steps, tiny preset (random weights)",
    train="flowers102/train",
    test="flowers102/test",
    recipe=("--config", "cifar", "--model", "resnet10t", "--img-size", "64", "--transform", "imagenet", "--mean",
            "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225", "-b", "64", "--max-steps", "240"),
    recipes=FLOWERS_RECIPES,
    rows=_rows(FLOWERS_RECIPES, "text"),
    copies=False,
)  # fmt: skip
STUDIES = {"peers": CIFAR10, "peers-flowers": FLOWERS}


def commands(data: Path, out: Path, seeds: str, study: Study = CIFAR10) -> list[list[str]]:
    """The augment and compare command lines of a table, in order; each resumes."""
    program = [sys.executable, "-m", "diffcoremix"]
    train, test = data / study.train, data / study.test
    root = out / study.key
    compare = [*program, "compare", str(train), "--test", str(test), *study.recipe, "--seeds", seeds]
    text = study.text_set(out)
    if study is CIFAR10:
        embedder = f"resnet20:{data.parent / 'models' / 'resnet20_cifar10.th'}"
        generator = ["--model", str(WORK / "generator"), "--batch-size", "50", "--embedder", embedder]
        flags = {
            "diffusemix": ["--counterpart", "img2img", "--strength", "0.5"],  # no InstructPix2Pix offline
            "diffcoremix+": ["--mask-from", str(WORK / "classifier"), "--threshold", THRESHOLD],
        }
        made = list(study.recipes)  # the text set is generation_quality.py's
    else:
        generator, flags = ["--height", "64", "--width", "64", "--batch-size", "34"], {}
        made = [*study.recipes, "diffcoremix"]
    lines = [
        [*program, "augment", str(train), "-o", str(root / "synth" / recipe), "--recipe", recipe, "--preset", "tiny",
         *generator, "--seed", "0", *flags.get(recipe, [])]
        for recipe in made
    ]  # fmt: skip
    text_folder = "text-base" if study is CIFAR10 else "text"
    lines += [
        [*compare, "--methods", "none,mixup,cutmix", "-o", str(root / "base")],
        [*compare, "--synthetic", str(text), "--methods", "diffcoremix,fc", "-o", str(root / text_folder)],
        [*compare, "--synthetic", str(text), "--methods", "fr,lrr", "-o", str(root / "text")],
        [*compare, "--synthetic", str(text), "--methods", "grr", "--synthetic-prob", "0.1", "-o",
         str(root / "text-grr")],
        [*compare, "--synthetic", str(root / "synth"), "--recipes", ",".join(study.recipes), "-o",
         str(root / "recipes")],
    ]  # fmt: skip
    return lines


def _summaries(folder: Path, label: str) -> dict[int, dict[str, Any]]:
    """seed -> summary of the finished runs of ``label`` in a compare folder."""
    from diffcoremix.train.comparison import RUNS_DIR, run_name

    found: dict[int, dict[str, Any]] = {}
    for seed in range(100):
        summary = folder / RUNS_DIR / run_name(label, seed) / "summary.json"
        if summary.is_file():
            found[seed] = json.loads(summary.read_text(encoding="utf-8"))
    return found


def set_figures(synthetic: Path) -> dict[str, float | int]:
    """Accepted images, generation seconds per accepted image and the accepted set's copy share."""
    from diffcoremix.manifest import read_manifest

    table = read_manifest(synthetic)
    accepted = table[table.accepted == True]  # noqa: E712
    scores = [float(s) for s in accepted["nearest_real_score"]]
    return {
        "accepted": len(accepted),
        "generated": len(table),
        "seconds_per_accepted": float(table["seconds"].sum()) / max(len(accepted), 1),
        "copy_share": sum(s > COPY_CUT for s in scores) / max(len(scores), 1),
    }


# --- the record -------------------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    """What a run's float results depend on besides its settings: the CPU's vector unit and torch's version (the same
    seeded run gives other accuracies on an AVX-512 machine than on an AVX2 one)."""
    import platform

    import torch

    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        info = ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vector = next((v for v in ("avx512f", "avx2") if v in flags), platform.machine())
    return {"cpu": model or platform.processor(), "vector": vector, "torch": torch.__version__}


def load_record(path: Path) -> dict[str, Any]:
    """A record (empty, of this machine, when there is none yet)."""
    if path.is_file():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    return {"environment": environment(), "runs": {}, "sets": {}, "overhead": {}}


def update_record(study: Study, out: Path) -> tuple[dict[str, Any], Path]:
    """This machine's record of the study, with the runs, sets and overhead found under ``out`` added (written back
    when there are runs).

    Raises:
        SystemExit: a run that the record holds gives another top-1 here (the environment differs in something the
            record does not name: the table would mix two experiments).
    """
    root, path = out / study.key, study.record(environment())
    record = load_record(path)
    differ = []
    for row in study.rows:
        seeds = record["runs"].setdefault(row.name, {})
        for seed, summary in _summaries(root / row.folder, row.label).items():
            test = summary["test"]
            found = {
                "top1": float(test["top1"]),
                "top5": float(test["top5"]),
                "step_s": float(summary["time"]["step_s"]),
            }
            held = seeds.get(str(seed))
            if held is not None and not math.isclose(held["top1"], found["top1"], abs_tol=1e-9):
                differ.append(f"{row.name} seed {seed}: recorded {held['top1']:.4f}, this run {found['top1']:.4f}")
                continue
            seeds[str(seed)] = found
    if differ:
        raise SystemExit(f"runs under {root} do not reproduce {path}:\n  " + "\n  ".join(differ))
    record["runs"] = {row: seeds for row, seeds in record["runs"].items() if seeds}
    names = {row.synthetic for row in study.rows if row.synthetic}
    for name in sorted(names):
        folder = study.set_folder(out, name)
        if (folder / "manifest").is_dir() and (folder / "filter.jsonl").is_file() and _finished(folder):
            record["sets"][name] = set_figures(folder)
    quiet = root / "overhead.json"
    if quiet.is_file():
        record["overhead"] = json.loads(quiet.read_text(encoding="utf-8"))
    if record["runs"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return record, path


def _finished(folder: Path) -> bool:
    """Whether a set's augment finished its rounds (a set of ``generate`` and ``filter`` has no augment record)."""
    from diffcoremix.manifest.layout import augment_problem

    return augment_problem(folder) is None


# --- the overhead, side by side ---------------------------------------------------------------------------------


def _row_run(row: Row, study: Study, out: Path) -> tuple[str, float, Path | None]:
    """A row's method, p and synthetic set (what its compare runs train with)."""
    if row.folder == "recipes":
        from diffcoremix.recipes import RECIPES as REGISTRY

        recipe = REGISTRY.get(row.name)
        p = recipe.mix_prob if recipe.mix_prob is not None else 0.5
        return recipe.method, p, study.set_folder(out, row.name)
    if row.synthetic is None:
        return row.label, 0.5, None
    return row.label, 0.1 if row.label == "grr" else 0.5, study.set_folder(out, "text")


def measure_overhead(out: Path, study: Study = CIFAR10, steps: int = 20, rounds: int = 2) -> dict[str, float]:
    """Time per step of every row's method against ``none``, side by side: interleaved rounds of ``steps`` steps
    each (the compare recipe, one torch thread, its own set), the median over every round's steps after the first;
    written to ``out/<dataset>/overhead.json`` (row -> ratio - 1). Run it on a quiet machine."""
    import statistics
    import tempfile

    import torch

    from diffcoremix.config import build_config, load_config_file
    from diffcoremix.train import TrainConfig, read_metrics, train

    if study is not CIFAR10:
        raise SystemExit("--overhead measures the CIFAR-10 table's rows")
    torch.set_num_threads(1)
    data = shared_data() / study.train
    recipe = build_config(TrainConfig, load_config_file("cifar", "train"), section="train")
    times: dict[str, list[float]] = {row.name: [] for row in study.rows}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for index, row in enumerate(study.rows):
                method, p, synthetic = _row_run(row, study, out)
                config = TrainConfig(**{**recipe.__dict__, "method": method, "mix_prob": p, "max_steps": steps,
                                        "epochs": 1, "warmup_epochs": 0.0, "seed": round_})  # fmt: skip
                run = Path(tmp) / f"row{index}-round{round_}"
                train(data, config=config, output=run, synthetic=synthetic)
                for line in read_metrics(run, "step")[1:]:
                    times[row.name].append(line["data_s"] + line["mix_s"] + line["compute_s"])
    base = statistics.median(times["none"])
    ratios = {row: statistics.median(values) / base - 1 for row, values in times.items()}
    measured = {"steps": steps, "rounds": rounds, "ratios": ratios}
    (out / study.key / "overhead.json").write_text(json.dumps(measured, indent=1))
    return ratios


# --- the table --------------------------------------------------------------------------------------------------


def _cell(d: Any) -> str:
    if d is None:
        return ""
    interval = f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if d.low is not None else "[n/a]"
    return f"{100 * d.mean:+.2f} {interval}"


def table(out: Path, study: Study = CIFAR10, *, machine: Path | None = None) -> str:
    """The Markdown table of every row that this machine's record (updated from the runs under ``out``) holds, or, with
    ``machine``, that record as it is; also written to ``out/<dataset>/peers.md``, with the overhead-accuracy figure."""
    from diffcoremix.train.comparison import MethodRow, estimate, overhead, paired_difference, plot_overhead_accuracy

    record, path = (load_record(machine), machine) if machine is not None else update_record(study, out)
    runs = {row.name: record["runs"][row.name] for row in study.rows if record["runs"].get(row.name)}
    if "none" not in runs:
        raise SystemExit(f"no run of none under {out / study.key} or in {path}")
    top1 = {row: {int(s): v["top1"] for s, v in found.items()} for row, found in runs.items()}
    step = {row: {int(s): v["step_s"] for s, v in found.items() if v.get("step_s")} for row, found in runs.items()}
    quiet = record["overhead"].get("ratios", {})
    lines = [
        "| row | seeds | top-1 (%) | top-5 (%) | Δ top-1 vs none (95% CI) | Δ top-1 vs diffcoremix (95% CI) "
        "| overhead/step (+%) | accepted | gen. s / accepted | copy share > 0.975 |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    plotted = []
    for row in study.rows:
        if row.name not in runs:
            continue
        e1, e5 = estimate(list(top1[row.name].values())), estimate([v["top5"] for v in runs[row.name].values()])
        vs_none = paired_difference(top1[row.name], top1["none"]) if row.name != "none" else None
        vs_dcm = None
        if row.name != "diffcoremix" and "diffcoremix" in top1:
            vs_dcm = paired_difference(top1[row.name], top1["diffcoremix"])
        if row.name in quiet:
            over_cell = f"{100 * quiet[row.name]:+.0f}"
            plotted.append(MethodRow(row.name, row.label, "", tuple(top1[row.name]), e1, e5, vs_none, None,
                                     estimate([0.0]), estimate([quiet[row.name]])))  # fmt: skip
        else:
            over = overhead(step[row.name], step["none"])
            over_cell = f"({100 * over.mean:+.0f})" if over else ""
        made = record["sets"].get(row.synthetic) if row.synthetic else None
        made_cells = ["", "", ""]
        if made:
            share = f"{made['seconds_per_accepted']:.3f}"
            copies = f"{100 * made['copy_share']:.1f}%" if study.copies else "n/a"
            made_cells = [str(made["accepted"]), share, copies]
        std = f" ± {100 * e1.std:.2f}" if e1.std is not None else ""
        std5 = f" ± {100 * e5.std:.2f}" if e5.std is not None else ""
        seeds = ",".join(map(str, sorted(top1[row.name])))
        lines.append(
            f"| {row.name} | {seeds} | {100 * e1.mean:.2f}{std} | {100 * e5.mean:.2f}{std5} "
            f"| {'baseline' if row.name == 'none' else _cell(vs_none)} | {_cell(vs_dcm)} "
            f"| {over_cell} | " + " | ".join(made_cells) + " |"
        )
    width = max(max(values) for values in top1.values()) + 1
    per_seed = ["", "Per seed, top-1 (%):", "", "| row | " + " | ".join(f"seed {s}" for s in range(width)) + " |",
                "|---|" + "---:|" * width]  # fmt: skip
    for row in study.rows:
        if row.name in top1:
            cells = (f"{100 * top1[row.name][s]:.2f}" if s in top1[row.name] else "" for s in range(width))
            per_seed.append(f"| {row.name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines + per_seed) + "\n"
    (out / study.key).mkdir(parents=True, exist_ok=True)
    (out / study.key / "peers.md").write_text(text, encoding="utf-8")
    if plotted:  # the figure's x is the side-by-side measurement only: the runs' own times are load noise here
        study.figure.write_bytes(plot_overhead_accuracy(plotted, study.title))
    return text


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="the peers tables: this machine's record, updated from the run folders"
    )
    parser.add_argument("out", nargs="?", type=Path, default=REPO / "benchmarks" / ".work" / "peers")
    parser.add_argument("--flowers", action="store_true", help="the Flowers-102 table")
    parser.add_argument("--overhead", action="store_true", help="measure the overhead column first (quiet machine)")
    parser.add_argument("--record", type=Path, help="print this committed record as it is (no run folders needed)")
    args = parser.parse_args(argv)
    chosen = FLOWERS if args.flowers else CIFAR10
    if args.overhead:
        print(json.dumps(measure_overhead(args.out, chosen), indent=1))
    print(table(args.out, chosen, machine=args.record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
