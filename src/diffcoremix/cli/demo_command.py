"""``diffcoremix demo``: the whole pipeline offline on a sample dataset, in one folder, ending with the HTML report.

The steps are those of the command line, called in-process with the same settings: ``sample-data``, ``scan``,
``prompts``, ``train`` of two ResNet-20s that know the sample's shapes (the filter's embedder and an independent
judge), ``finetune --preset tiny``, ``augment`` with the fine-tuned generator and the trained embedder, ``judge``,
``compare`` of ``none`` and ``diffcoremix``, ``eval`` with Grad-CAM maps, then ``report``, whose overview shows how
often the judge sees the class in the kept and in the rejected candidates. Each step resumes or finds its work done,
so a second ``demo`` into the same folder succeeds quickly. The folder is marked by ``DIR/demo.json``; a non-empty
folder that the demo did not make is refused before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from diffcoremix._version import __version__
from diffcoremix.atomic import write_text_if_changed
from diffcoremix.cli.commands import Command, show_progress
from diffcoremix.config import write_resolved_config
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.sample import MARKER as SAMPLE_MARKER
from diffcoremix.data.sample import make_sample_dataset
from diffcoremix.data.scan import scan_dataset
from diffcoremix.data.sources import DataConfig, usable_sources
from diffcoremix.filter.config import FilterConfig
from diffcoremix.finetune.config import FinetuneConfig
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.manifest.layout import (
    JUDGE_FILE,
    MADE_BY,
    SETTINGS_FILE,
    OutputFolderError,
    SettingsConflictError,
    entries,
)
from diffcoremix.manifest.lock import FolderLock
from diffcoremix.prompts.builder import PromptsConfig, build_prompts
from diffcoremix.train.config import TrainConfig

logger = logging.getLogger(__name__)
T = TypeVar("T")

if TYPE_CHECKING:
    from diffcoremix.judge.runner import Agreement

DEFAULT_OUT = Path("demo_out")
RECORD_FILE = "demo.json"
"""``DIR/demo.json``: marks DIR as a demo folder (written before any step runs)."""

DATA, PROMPTS, GENERATOR, AUGMENTED = "data", "prompts.jsonl", "generator", "augmented"
EMBEDDER, JUDGE, SHAPES, RUN = "embedder", "judge", "shapes", "run"
"""``DIR/embedder`` and ``DIR/judge``: each a ResNet-20's training shapes (``shapes``) and its train run (``run``)."""
COMPARE, EVAL, REPORT = "compare", "eval", "report.html"
OWN_ENTRIES = frozenset(
    {RECORD_FILE, DATA, PROMPTS, "prompts.config.yaml", EMBEDDER, JUDGE, GENERATOR, AUGMENTED, COMPARE, EVAL, REPORT}
)
"""Everything the demo writes at the top of DIR (a folder holding only these is an earlier ``make demo``'s)."""

# The settings of the steps: those of the Makefile's ``demo`` target before this command replaced it.
SAMPLE_PER_CLASS, SAMPLE_SIZE = 8, 96
PROMPTS_CONFIG = PromptsConfig(pack="generic", seed=0)
FINETUNE_CONFIG = FinetuneConfig(preset="tiny", vae_steps=300, max_steps=1000, batch_size=16)
AUGMENT_PROMPTS = PromptsConfig(pack="generic", seed=0, context="sample", per_image=2)

# The filter's embedder and the judge: ResNet-20s that know circles, squares and triangles. The demo's 24 images are
# too few to learn them from (trained on those alone, a ResNet-20 labelled 40% of new shapes right, chance being
# 33%), so each learns from 3,000 shapes of its own, drawn apart from DATA (a stand-in for an embedder pretrained on
# the world's images): 400 AdamW steps at 24 x 24 pixels; both labelled 98-100% of 60 new shapes and all 24 of DATA
# right (measured 2026-12-07; SGD, fewer images or fewer steps left some seeds at chance). The judge differs from
# the embedder in its shapes and its seed, so that it is an independent second opinion.
SHAPES_PER_CLASS, SHAPES_SIZE = 1000, 48
SHAPES_SEEDS = {EMBEDDER: 1, JUDGE: 2}
"""The seed of each network's shapes (DATA's is 0)."""
CLASSIFIER_RECIPE = TrainConfig(model="resnet20", img_size=24, batch_size=32, opt="adamw", lr=1e-3, max_steps=400)
CLASSIFIER_SEEDS = {EMBEDDER: 0, JUDGE: 1}
# The threshold comes from `diffcoremix filter --calibrate` for this embedder on DATA (the 10th percentile of the real
# images' own, leave-one-out, prototype scores): it suggested 0.928 and 0.957 for the embedder trained on 1 and on 2
# CPU threads (the weights depend on the arithmetic's order), and the demo takes the lower end, which keeps more
# candidates for the compare step. The random tiny CLIP that the demo used before scored everything near 0.96; this
# embedder spreads the candidates from 0.4 to 1.0, and anywhere from 0.90 to 0.96 the judge saw the prompted class in
# 66-78% of the kept and 23-26% of the rejected; at 0.93 in 73% of the 30 kept and 24% of the 42 rejected (measured
# 2026-12-07, 2 threads).
AUGMENT_FILTER = FilterConfig(threshold=0.93)
AUGMENT_RETRIES = 1
COMPARE_METHODS, COMPARE_SEEDS = "none,diffcoremix", "0"
COMPARE_RECIPE = TrainConfig(model="resnet20", img_size=32, batch_size=8, lr=0.02, max_steps=12)
SALIENCY = 3
STEPS = 10

ABOUT = """\
What this was: the tiny models are the real classes at tiny size: the generator is diffusers'
StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL) with a transformers CLIPTextModel, fine-tuned here
from random weights on 24 procedural images for 1,300 steps (a few minutes on a CPU); the filter's embedder and
the judge are ResNet-20s trained here for 400 steps on 3,000 other procedural shapes each; the compared classifiers
are ResNet-20s trained for 12 steps. Their images and accuracies are a smoke test of the pipeline, not figures about
the method; the real figures are in benchmarks/README.md."""

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


def _agreement_line(by_decision: Mapping[str, Agreement]) -> str:
    """How often the judge sees the prompted class among the kept and among the rejected candidates."""
    shares = []
    for group, word in (("accepted", "kept"), ("rejected", "rejected")):
        a = by_decision.get(group)
        rate = f"{a.rate:.0%}" if a is not None and a.rate is not None else "-"
        shares.append(f"{rate} of the {a.judged if a is not None else 0} {word}")
    return f"the judge sees the class each was prompted for in {shares[0]} and {shares[1]} candidates"


def run_demo(out: Path, *, progress: bool = False) -> Path:
    """Run every step into ``out``; returns the report's path. Errors propagate as DiffCoReMixError."""
    claim_folder(out)
    with FolderLock(out):  # a second demo in the same folder is refused while this one runs
        return _run_steps(out, progress)


def _run_steps(out: Path, progress: bool) -> Path:
    from diffcoremix.augmentation import augment  # torch and diffusers: imported only when the demo runs
    from diffcoremix.finetune import finetune
    from diffcoremix.judge import judge
    from diffcoremix.manifest.records import read_manifest
    from diffcoremix.train.comparison import RUNS_DIR, compare
    from diffcoremix.train.evaluation import evaluate
    from diffcoremix.train.loop import train
    from diffcoremix.train.run import MODEL_FILE

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

    shapes, steps = SHAPES_PER_CLASS * 3, CLASSIFIER_RECIPE.max_steps
    with step(f"training the filter's embedder and the judge: two ResNet-20s, each on {shapes:,} procedural shapes of "
              f"its own (not DATA's), {steps} steps -> {out / EMBEDDER}, {out / JUDGE}"):  # fmt: skip
        for name in (EMBEDDER, JUDGE):
            make_sample_dataset(out / name / SHAPES, per_class=SHAPES_PER_CLASS, size=SHAPES_SIZE,
                                seed=SHAPES_SEEDS[name], overwrite=True)  # fmt: skip
            recipe = dataclasses.replace(CLASSIFIER_RECIPE, seed=CLASSIFIER_SEEDS[name])
            trained = _afresh_if_changed(functools.partial(
                train, out / name / SHAPES, config=recipe, output=out / name / RUN, test=data,
                data_config=DataConfig(), progress=progress))  # fmt: skip
            _say(f"      {name}: top-1 {trained.summary['test']['top1']:.0%} on DATA's {report.num_images} images, "
                 "which it never saw")  # fmt: skip

    with step(f"fine-tuning the tiny generator on {data} (its VAE, then its UNet and text encoder; 2 to 4 minutes)"):
        tuned = _afresh_if_changed(functools.partial(finetune, data, generator, FINETUNE_CONFIG,
                                                     data_config=DataConfig(), progress=progress))  # fmt: skip
        _say(f"      {tuned.info['steps']} steps (+{tuned.info.get('vae_steps') or 0} VAE steps), final loss "
             f"{tuned.info['final_loss']:.4f} -> {tuned.model}")  # fmt: skip

    embedder = f"resnet20:{(out / EMBEDDER / RUN / MODEL_FILE).resolve()}"
    with step(
        f"augmenting {data} -> {augmented}: generate 2 counterparts per image, filter (cosine >= "
        f"{AUGMENT_FILTER.threshold} in the trained embedder's features), regenerate rejects once"
    ):
        result = _afresh_if_changed(functools.partial(
            augment, data, augmented, AUGMENT_PROMPTS, GenerateConfig(preset="tiny", model=_generator_model(out)),
            dataclasses.replace(AUGMENT_FILTER, embedder=embedder), retries=AUGMENT_RETRIES,
            data_config=DataConfig(), progress=progress,
        ))  # fmt: skip
        _say(f"      {sum(result.accepted.values())} accepted of a budget of {sum(result.budget.values())} after "
             f"{result.attempts} round(s); accepted images: {augmented / 'train'}")  # fmt: skip
        manifest = read_manifest(augmented)[["key", "context", "score", "accepted"]]
        _indented(manifest.head().to_string())

    with step(f"judging every candidate with the independent ResNet-20 ({out / JUDGE / RUN}) -> "
              f"{augmented / JUDGE_FILE}"):  # fmt: skip
        verdict = judge(augmented, f"run:{out / JUDGE / RUN}", progress=progress)
        _say(f"      {_agreement_line(verdict.by_decision or {})}")

    compare_dir = out / COMPARE
    with step(f"comparing none and diffcoremix: ResNet-20, {COMPARE_RECIPE.max_steps} steps each -> {compare_dir}"):
        compared = _afresh_if_changed(functools.partial(
            compare, data, COMPARE_METHODS, COMPARE_SEEDS, config=COMPARE_RECIPE, output=compare_dir, test=data,
            synthetic=augmented, data_config=DataConfig(), progress=progress,
        ))  # fmt: skip
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


def _afresh_if_changed(step: Callable[..., T]) -> T:
    """Run a step (``step(overwrite=...)``) into its folder of the demo's own; where that folder holds a run with
    other settings (an earlier version of the demo made it), start that folder afresh instead of stopping: the demo
    never asks its user for ``--overwrite``, and ``--overwrite`` deletes only what our records name."""
    try:
        return step(overwrite=False)
    except SettingsConflictError as err:
        logger.warning("%s: an earlier demo's run; started afresh", err)
        return step(overwrite=True)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUT, metavar="DIR",
        help=f"the demo's folder (new, empty, or an earlier demo's: it resumes) [{DEFAULT_OUT}]",
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    out: Path = args.output
    start = time.perf_counter()
    _say(f"diffcoremix demo: the whole pipeline offline on a sample dataset, in {out} (about 5 minutes on a CPU)")
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
    "the whole pipeline offline on a sample dataset: sample data, scan, prompts, train the filter's embedder and a "
    "judge, fine-tune the tiny generator, augment, judge, compare, eval, and the HTML report (about 5 minutes on a "
    "CPU; rerun it to resume)",
    _arguments,
    _run,
)
