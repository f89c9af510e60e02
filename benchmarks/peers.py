"""The peers under one recipe (issue 28): the commands of ``train_evidence.py --tables peers`` and its table.

CIFAR-10 with 100 training images per class, the CIFAR ResNet-20 from random initialisation, 400 optimizer steps of
128 images, the 10,000 test images, one torch thread per run (``--config cifar --max-steps 400``); every synthetic
set is made by the tiny generator fine-tuned on the same images (``generation_quality.py``), one counterpart per
training image (an equal generation budget), with the ResNet-20 of ``../shared/models`` as the filter's embedder:

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

The table pairs each row with ``none`` and with ``diffcoremix`` by seed (mean difference and its 95% t-interval, as
``compare`` computes them), and adds the overhead per step over ``none`` measured side by side on a quiet machine
(``python benchmarks/peers.py OUT --overhead``: interleaved rounds of 20 steps of every row, the median step time; in
parentheses when only the runs' own step times are there, which the machine's load makes noise), the generation
seconds per accepted image (the manifest's per-image share of its batch's wall time, every attempt, over the accepted
images) and the copy share of the accepted set (nearest real training image's cosine above 0.975 in the filter's
ResNet-20 features: ``nearest_real_score``). ``benchmarks/figures/peers_overhead_accuracy.png`` (the paper's Fig. 4
for the peers) plots top-1 against the side-by-side overhead.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "generation_quality"
COPY_CUT = 0.975
THRESHOLD = "0.8603317079422172"
"""The prototype rule's calibrated threshold for the text counterparts (``generation_quality.py``)."""
RECIPES = ("diffusemix", "diff-mix", "da-fusion", "real-guidance", "diffcoremix+")
RECIPE_FLAGS: dict[str, list[str]] = {
    "diffusemix": ["--counterpart", "img2img", "--strength", "0.5"],  # no InstructPix2Pix offline (see above)
    "diffcoremix+": ["--mask-from", str(WORK / "classifier"), "--threshold", THRESHOLD],
}
ROWS: tuple[tuple[str, str, str, str], ...] = (
    # (row, compare folder, run label, what it is)
    ("none", "text-base", "none", "baseline"),
    ("mixup", "text", "mixup", "baseline"),
    ("cutmix", "text", "cutmix", "baseline"),
    ("diffusemix", "recipes", "recipe:diffusemix", "recipe"),
    ("diff-mix", "recipes", "recipe:diff-mix", "recipe"),
    ("da-fusion", "recipes", "recipe:da-fusion", "recipe"),
    ("real-guidance", "recipes", "recipe:real-guidance", "recipe"),
    ("diffcoremix", "text-base", "diffcoremix", "recipe"),
    ("diffcoremix+", "recipes", "recipe:diffcoremix+", "recipe"),
    ("fc, text", "text-base", "fc", "usage"),
    ("fr, text", "text", "fr", "usage"),
    ("lrr p 0.5, text", "text", "lrr", "usage"),
    ("grr p 0.1, text", "text-grr", "grr", "usage"),
)
SYNTHETIC = {"text-base": "text", "text": "text", "text-grr": "text"}


def commands(data: Path, out: Path, seeds: str) -> list[list[str]]:
    """The augment and compare command lines, in order; each resumes."""
    program = [sys.executable, "-m", "diffcoremix"]
    train, test = data / "cifar10" / "train", data / "cifar10" / "test"
    embedder = f"resnet20:{data.parent / 'models' / 'resnet20_cifar10.th'}"
    generated = WORK / "generated"
    root = out / "cifar10"
    compare = [*program, "compare", str(train), "--test", str(test), "--config", "cifar", "--max-steps", "400",
               "--seeds", seeds]  # fmt: skip
    lines = [
        [*program, "augment", str(train), "-o", str(root / "synth" / recipe), "--recipe", recipe, "--preset", "tiny",
         "--model", str(WORK / "generator"), "--batch-size", "50", "--embedder", embedder, "--seed", "0",
         *RECIPE_FLAGS.get(recipe, [])]
        for recipe in RECIPES
    ]  # fmt: skip
    lines += [
        [*compare, "--synthetic", str(generated), "--methods", "none,fc,diffcoremix", "-o", str(root / "text-base")],
        [*compare, "--synthetic", str(generated), "--methods", "mixup,cutmix,fr,lrr", "-o", str(root / "text")],
        [*compare, "--synthetic", str(generated), "--methods", "grr", "--synthetic-prob", "0.1", "-o",
         str(root / "text-grr")],
        [*compare, "--synthetic", str(root / "synth"), "--recipes", ",".join(RECIPES), "-o", str(root / "recipes")],
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


def _row_run(row: str, folder: str, label: str, root: Path) -> tuple[str, float, Path | None]:
    """A row's method, p and synthetic set (what its compare runs train with)."""
    if folder == "recipes":
        from diffcoremix.recipes import RECIPES as REGISTRY

        recipe = REGISTRY.get(row)
        return recipe.method, recipe.mix_prob if recipe.mix_prob is not None else 0.5, root / "synth" / row
    if row in ("none", "mixup", "cutmix"):
        return label, 0.5, None
    return label, 0.1 if label == "grr" else 0.5, WORK / "generated"


def measure_overhead(out: Path, steps: int = 20, rounds: int = 2) -> dict[str, float]:
    """Time per step of every row's method against ``none``, side by side: interleaved rounds of ``steps`` steps
    each (the compare recipe, one torch thread, its own set), the median over every round's steps after the first;
    written to ``out/overhead.json`` (row -> ratio - 1). Run it on a quiet machine."""
    import statistics
    import tempfile

    import torch

    from diffcoremix.config import build_config, load_config_file
    from diffcoremix.train import TrainConfig, read_metrics, train

    torch.set_num_threads(1)
    data = shared_data() / "cifar10" / "train"
    recipe = build_config(TrainConfig, load_config_file("cifar", "train"), section="train")
    times: dict[str, list[float]] = {row: [] for row, *_ in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for index, (row, folder, label, _kind) in enumerate(ROWS):
                method, p, synthetic = _row_run(row, folder, label, out / "cifar10")
                config = TrainConfig(**{**recipe.__dict__, "method": method, "mix_prob": p, "max_steps": steps,
                                        "epochs": 1, "warmup_epochs": 0.0, "seed": round_})  # fmt: skip
                run = Path(tmp) / f"row{index}-round{round_}"
                train(data, config=config, output=run, synthetic=synthetic)
                for line in read_metrics(run, "step")[1:]:
                    times[row].append(line["data_s"] + line["mix_s"] + line["compute_s"])
    base = statistics.median(times["none"])
    ratios = {row: statistics.median(values) / base - 1 for row, values in times.items()}
    (out / "overhead.json").write_text(json.dumps({"steps": steps, "rounds": rounds, "ratios": ratios}, indent=1))
    return ratios


def _cell(d: Any) -> str:
    if d is None:
        return ""
    interval = f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if d.low is not None else "[n/a]"
    return f"{100 * d.mean:+.2f} {interval}"


def table(out: Path) -> str:
    """The Markdown table of every row with runs, and ``out/peers.json`` / the overhead-accuracy figure."""
    from diffcoremix.train.comparison import estimate, method_rows, overhead, paired_difference, plot_overhead_accuracy

    root = out / "cifar10"
    runs = {row: _summaries(root / folder, label) for row, folder, label, _ in ROWS}
    runs = {row: found for row, found in runs.items() if found}
    if "none" not in runs:
        raise SystemExit(f"no finished run of none under {root}")
    top1 = {row: {s: float(v["test"]["top1"]) for s, v in found.items()} for row, found in runs.items()}
    top5 = {row: {s: float(v["test"]["top5"]) for s, v in found.items()} for row, found in runs.items()}
    step = {row: {s: float(v["time"]["step_s"]) for s, v in found.items()} for row, found in runs.items()}
    sets = {"text": set_figures(WORK / "generated")}
    for recipe in RECIPES:
        if (root / "synth" / recipe / "filter.jsonl").is_file():
            sets[recipe] = set_figures(root / "synth" / recipe)
    lines = [
        "| row | seeds | top-1 (%) | top-5 (%) | Δ top-1 vs none (95% CI) | Δ top-1 vs diffcoremix (95% CI) "
        "| overhead/step (+%) | accepted | gen. s / accepted | copy share > 0.975 |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    figures: dict[str, Any] = {}
    quiet_file = out / "overhead.json"
    quiet = json.loads(quiet_file.read_text())["ratios"] if quiet_file.is_file() else {}
    for row, folder, _label, _kind in ROWS:
        if row not in runs:
            continue
        e1, e5 = estimate(list(top1[row].values())), estimate(list(top5[row].values()))
        vs_none = paired_difference(top1[row], top1["none"]) if row != "none" else None
        vs_dcm = None
        if row != "diffcoremix" and "diffcoremix" in top1:
            vs_dcm = paired_difference(top1[row], top1["diffcoremix"])
        over = overhead(step[row], step["none"])
        over_cell = f"{100 * quiet[row]:+.0f}" if row in quiet else f"({100 * over.mean:+.0f})"
        name = SYNTHETIC.get(folder, row) if row not in ("none", "mixup", "cutmix") else None
        made = sets.get(name) if name else None
        std = f" ± {100 * e1.std:.2f}" if e1.std is not None else ""
        std5 = f" ± {100 * e5.std:.2f}" if e5.std is not None else ""
        made_cells = ["", "", ""]
        if made:
            made_cells = [
                str(made["accepted"]),
                f"{made['seconds_per_accepted']:.3f}",
                f"{100 * made['copy_share']:.1f}%",
            ]
        seeds = ",".join(map(str, sorted(top1[row])))
        lines.append(
            f"| {row} | {seeds} | {100 * e1.mean:.2f}{std} | {100 * e5.mean:.2f}{std5} "
            f"| {'baseline' if row == 'none' else _cell(vs_none)} | {_cell(vs_dcm)} "
            f"| {over_cell} | " + " | ".join(made_cells) + " |"
        )
        figures[row] = {"top1": top1[row], "top5": top5[row], "step_s": step[row], "set": made}
    per_seed = ["", "Per seed, top-1 (%):", "", "| row | " + " | ".join(f"seed {s}" for s in range(5)) + " |",
                "|---|" + "---:|" * 5]  # fmt: skip
    for row in figures:
        per_seed.append(f"| {row} | " + " | ".join(f"{100 * top1[row][s]:.2f}" if s in top1[row] else ""
                                                   for s in range(5)) + " |")  # fmt: skip
    text = "\n".join(lines + per_seed) + "\n"
    (out / "peers.md").write_text(text, encoding="utf-8")
    (out / "peers.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")
    if quiet:  # the figure's x is the side-by-side measurement only: the runs' own times are load noise here
        rows, _where = method_rows({row: runs[row] for row in figures})
        rows = [dataclasses.replace(r, overhead=estimate([quiet[r.label]])) for r in rows if r.label in quiet]
        figure = REPO / "benchmarks" / "figures" / "peers_overhead_accuracy.png"
        figure.write_bytes(plot_overhead_accuracy(rows, "CIFAR-10, 100/class, ResNet-20, 400 steps"))
    return text


def shared_data() -> Path:
    for parent in REPO.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    raise SystemExit("../shared/data not found")


if __name__ == "__main__":  # python benchmarks/peers.py [OUT] [--overhead]: the table from the runs there are
    where = Path(next((a for a in sys.argv[1:] if not a.startswith("--")), REPO / "benchmarks" / ".work" / "peers"))
    if "--overhead" in sys.argv:
        print(json.dumps(measure_overhead(where), indent=1))
    print(table(where))
