"""``diffcoremix demo``: the whole pipeline offline on a sample dataset, in one folder, ending with the HTML report.

The steps are those of the command line, called in-process with the same settings: ``sample-data``, ``scan``,
``prompts``, ``finetune --preset tiny``, ``augment`` with the fine-tuned generator, ``compare`` of ``none`` and
``diffcoremix``, ``eval`` with Grad-CAM maps, then ``report``. Each step resumes or finds its work done, so a second
``demo`` into the same folder succeeds quickly. The folder is marked by ``DIR/demo.json``; a non-empty folder that
the demo did not make is refused before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffcoremix._version import __version__
from diffcoremix.atomic import write_text_if_changed
from diffcoremix.cli.commands import Command, show_progress
from diffcoremix.config import write_resolved_config
from diffcoremix.data.sample import MARKER as SAMPLE_MARKER
from diffcoremix.data.sample import make_sample_dataset
from diffcoremix.data.scan import ScanConfig, scan_dataset
from diffcoremix.data.sources import DataConfig, usable_sources
from diffcoremix.filter.config import FilterConfig
from diffcoremix.finetune.config import FinetuneConfig
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.manifest.layout import MADE_BY, SETTINGS_FILE, OutputFolderError, entries
from diffcoremix.manifest.lock import FolderLock
from diffcoremix.prompts.builder import PromptsConfig, build_prompts
from diffcoremix.train.config import TrainConfig

DEFAULT_OUT = Path("demo_out")
RECORD_FILE = "demo.json"
"""``DIR/demo.json``: marks DIR as a demo folder (written before any step runs)."""

DATA, PROMPTS, GENERATOR, AUGMENTED = "data", "prompts.jsonl", "generator", "augmented"
COMPARE, EVAL, REPORT = "compare", "eval", "report.html"
OWN_ENTRIES = frozenset(
    {RECORD_FILE, DATA, PROMPTS, "prompts.config.yaml", GENERATOR, AUGMENTED, COMPARE, EVAL, REPORT}
)
"""Everything the demo writes at the top of DIR (a folder holding only these is an earlier ``make demo``'s)."""

# The settings of the steps: those of the Makefile's ``demo`` target before this command replaced it.
SAMPLE_PER_CLASS, SAMPLE_SIZE = 8, 96
PROMPTS_CONFIG = PromptsConfig(pack="generic", seed=0)
FINETUNE_CONFIG = FinetuneConfig(preset="tiny", vae_steps=300, max_steps=1000, batch_size=16)
AUGMENT_PROMPTS = PromptsConfig(pack="generic", seed=0, context="sample", per_image=2)
AUGMENT_FILTER = FilterConfig(threshold=0.96)
AUGMENT_RETRIES = 1
COMPARE_METHODS, COMPARE_SEEDS = "none,diffcoremix", "0"
COMPARE_RECIPE = TrainConfig(model="resnet20", img_size=32, batch_size=8, lr=0.02, max_steps=12)
SALIENCY = 3
STEPS = 8

ABOUT = """\
What this was: the tiny models are the real classes at tiny size: the generator is diffusers'
StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL) with a transformers CLIPTextModel, fine-tuned here
from random weights on 24 procedural images for 1,300 steps (a few minutes on a CPU); the filter's embedder is a
real open_clip CLIP with random weights; the classifiers are ResNet-20s trained for 12 steps. Their images and
accuracies are a smoke test of the pipeline, not figures about the method; the real figures are in
benchmarks/README.md."""

REAL_MODEL = """\
The same on a real model (a GPU, and the Hugging Face hub or local weights):
  diffcoremix augment DATA -o OUT --preset sd15 --pack birds --context sample --retries 2
  diffcoremix finetune DATA -o MODEL --preset sd15 --method lora --rank 8 --max-steps 2000 --mixed-precision fp16
  diffcoremix augment DATA -o OUT --preset sd15 --lora MODEL --pack birds --context sample --retries 2
  diffcoremix augment DATA -o OUT --model PATH_OR_HUB_ID --pack birds --context sample --retries 2
  diffcoremix compare DATA --methods none,mixup,cutmix,diffcoremix --seeds 0,1,2 --synthetic OUT --test TEST -o CMP
  diffcoremix eval CMP/runs/none-seed0 CMP/runs/diffcoremix-seed0 --data TEST --saliency 8 -o EVAL
  diffcoremix report OUT --compare CMP --eval EVAL -o report.html
and on a Ray cluster (pip install 'diffcoremix[ray]'; OUT on storage every node sees):
  diffcoremix augment DATA -o /shared/OUT --preset sd15 --pack birds --retries 2 --executor ray --address auto"""


class DemoFolderError(OutputFolderError):
    """The demo's folder holds files that the demo did not make."""


def _record() -> dict[str, Any]:
    return {"made_by": MADE_BY, "command": "demo", "diffcoremix_version": __version__}


def _is_demo_folder(out: Path) -> bool:
    try:
        record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and record.get("made_by") == MADE_BY and record.get("command") == "demo"


def _is_earlier_make_demo(out: Path) -> bool:
    """A folder of the Makefile's demo before this command: only the demo's names, and its sample dataset."""
    return set(entries(out)) <= OWN_ENTRIES and (out / DATA / SAMPLE_MARKER).is_file()


def claim_folder(out: Path) -> None:
    """Create DIR, or check that it is the demo's own (new, empty, or marked by ``demo.json``), and mark it.

    Raises:
        DemoFolderError: DIR is a file, or a non-empty folder that the demo did not make (left untouched).
    """
    if out.exists() and not out.is_dir():
        raise DemoFolderError(f"{out} is a file, not a folder: choose a new or empty folder with -o")
    if out.is_dir() and entries(out) and not _is_demo_folder(out) and not _is_earlier_make_demo(out):
        raise DemoFolderError(
            f"{out} is not empty and was not made by diffcoremix demo (it has no {RECORD_FILE} of the demo): choose "
            "a new or empty folder with -o; the demo never writes into other folders"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text_if_changed(out / RECORD_FILE, json.dumps(_record(), indent=2, sort_keys=True) + "\n")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _say(text: str = "") -> None:
    print(text, flush=True)


class _Steps:
    """Numbered headings and the time each step took."""

    def __init__(self) -> None:
        self.number = 0

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        self.number += 1
        _say(f"[{self.number}/{STEPS}] {what}")
        start = time.perf_counter()
        yield
        _say(f"      done in {_duration(time.perf_counter() - start)}")


def _indented(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        _say(f"      {line}" if line else "")


def _generator_model(out: Path) -> str:
    """How ``augment`` names the fine-tuned generator: as an earlier demo in DIR named it, if that is this folder,
    so that a rerun from another working directory (or with ``-o`` spelled otherwise) resumes instead of
    conflicting; else by its absolute path."""
    model = (out / GENERATOR).resolve()
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        settings = json.loads((out / AUGMENTED / SETTINGS_FILE).read_text(encoding="utf-8"))
        earlier = settings["settings"]["model"]
        if isinstance(earlier, str) and Path(earlier).resolve() == model:
            return earlier
    return str(model)


def run_demo(out: Path, *, progress: bool = False) -> Path:
    """Run every step into ``out``; returns the report's path. Errors propagate as DiffCoReMixError."""
    claim_folder(out)
    with FolderLock(out):  # a second demo in the same folder is refused while this one runs
        return _run_steps(out, progress)


def _run_steps(out: Path, progress: bool) -> Path:
    from diffcoremix.augmentation import augment  # torch and diffusers: imported only when the demo runs
    from diffcoremix.finetune import finetune
    from diffcoremix.manifest.records import read_manifest
    from diffcoremix.train.comparison import RUNS_DIR, compare
    from diffcoremix.train.evaluation import evaluate

    data, generator, augmented = out / DATA, out / GENERATOR, out / AUGMENTED
    step = _Steps()
    with step(f"writing a sample dataset of 3 classes x {SAMPLE_PER_CLASS} procedural images to {data}"):
        make_sample_dataset(data, per_class=SAMPLE_PER_CLASS, size=SAMPLE_SIZE, seed=0, overwrite=True)

    with step(f"scanning {data}: counts, sizes and bad files"):
        report = scan_dataset(DataConfig().select(data), ScanConfig(), progress=progress)
        _say(f"      {len(report.classes)} classes, {report.num_images} images, {len(report.problems)} problem(s)")

    prompts_file = out / PROMPTS
    with step(f"planning the contextual and negative prompts -> {prompts_file}"):
        plan = build_prompts(usable_sources(data, DataConfig()).listing, PROMPTS_CONFIG)
        plan.write_jsonl(prompts_file)
        plan.warn_conflicts()
        write_resolved_config(prompts_file.with_suffix(".config.yaml"), {"prompts": PROMPTS_CONFIG}, data=data,
                              pack_file=plan.pack.source)  # fmt: skip
        _say(f"      {len(plan)} prompts, e.g. {plan[0].prompt!r}")

    with step(f"fine-tuning the tiny generator on {data} (its VAE, then its UNet and text encoder; 2 to 4 minutes)"):
        tuned = finetune(data, generator, FINETUNE_CONFIG, data_config=DataConfig(), progress=progress)
        _say(f"      {tuned.info['steps']} steps (+{tuned.info.get('vae_steps') or 0} VAE steps), final loss "
             f"{tuned.info['final_loss']:.4f} -> {tuned.model}")  # fmt: skip

    with step(
        f"augmenting {data} -> {augmented}: generate 2 counterparts per image, filter (cosine >= "
        f"{AUGMENT_FILTER.threshold}), regenerate rejects once"
    ):
        result = augment(
            data, augmented, AUGMENT_PROMPTS, GenerateConfig(preset="tiny", model=_generator_model(out)),
            AUGMENT_FILTER, retries=AUGMENT_RETRIES, data_config=DataConfig(), progress=progress,
        )  # fmt: skip
        _say(f"      {sum(result.accepted.values())} accepted of a budget of {sum(result.budget.values())} after "
             f"{result.attempts} round(s); accepted images: {augmented / 'train'}")  # fmt: skip
        manifest = read_manifest(augmented)[["key", "context", "score", "accepted"]]
        _indented(manifest.head().to_string())

    compare_dir = out / COMPARE
    with step(f"comparing none and diffcoremix: ResNet-20, {COMPARE_RECIPE.max_steps} steps each -> {compare_dir}"):
        compared = compare(
            data, COMPARE_METHODS, COMPARE_SEEDS, config=COMPARE_RECIPE, output=compare_dir, test=data,
            synthetic=augmented, data_config=DataConfig(), progress=progress,
        )  # fmt: skip
        _indented(compared.table)

    eval_dir = out / EVAL
    runs = [compare_dir / RUNS_DIR / f"{method}-seed{COMPARE_SEEDS}" for method in COMPARE_METHODS.split(",")]
    with step(f"evaluating both runs on {data}, with Grad-CAM maps of {SALIENCY} images -> {eval_dir}"):
        results = evaluate(runs, DataConfig().select(data), output=eval_dir, saliency=SALIENCY, progress=progress)
        for r in results:
            _say(f"      {r.name}: top-1 {r.top1:.1%}, loss {r.loss:.3f} on {r.n} images")

    from diffcoremix.report import build_report  # the report's own package; imported only when the demo runs

    with step(f"writing the HTML report -> {out / REPORT}"):
        built = build_report(augmented, out / REPORT, compare=compare_dir, evaluation=eval_dir, progress=progress)
        _say(f"      {built.size / 1e6:.1f} MB")
    return Path(built.path)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUT, metavar="DIR",
        help=f"the demo's folder (new, empty, or an earlier demo's: it resumes) [{DEFAULT_OUT}]",
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    out: Path = args.output
    start = time.perf_counter()
    _say(f"diffcoremix demo: the whole pipeline offline on a sample dataset, in {out} (about 4 minutes on a CPU)")
    report = run_demo(out, progress=show_progress(args)).resolve()
    _say()
    _say(f"report: {report}")
    _say(f"open it: {report.as_uri()}")
    _say(f"total time: {_duration(time.perf_counter() - start)}")
    _say()
    _say(ABOUT)
    _say()
    _say(REAL_MODEL)
    return 0


DEMO_COMMAND = Command(
    "demo",
    "the whole pipeline offline on a sample dataset: sample data, scan, prompts, fine-tune the tiny generator, "
    "augment, compare, eval, and the HTML report (about 4 minutes on a CPU; rerun it to resume)",
    _arguments,
    _run,
)
