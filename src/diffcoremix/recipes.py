"""The peers under one recipe: DiffuseMix, Diff-Mix, DA-Fusion, Real-Guidance and DiffCoRe-Mix, one registry entry
each.

A recipe is what a peer's public code does, said in this project's settings: how a counterpart relates to its source
(the counterpart mode, its strengths, guidance and steps), its prompts, whether it filters, and how the synthetic images
enter training: the method (DiffDA-Eval's usage modes ``fc``, ``lrr``, ``grr``; DiffCoRe-Mix's mixing; DiffuseMix's
halves and fractal) and its probability p (``mix_prob``). The facts come from ``METHOD.md`` ("The peers", from the
peers' public code); where a number is this project's choice, the entry says so.

A recipe's settings are defaults, nothing more: dataclass defaults < recipe < ``--config`` file < explicit flags.
``augment DATA -o SYN/NAME --recipe NAME`` makes a recipe's synthetic set and records NAME in ``OUT/config.yaml``;
``compare DATA --recipes a,b --synthetic SYN`` trains each recipe on ``SYN/<name>`` with its method and p, and
``--build`` first makes the sets that are missing or unfinished, by the same augment (one resumable command).

The peers filter nothing: their candidates are still scored (every score and nearest-real cosine is recorded, so the
reports can measure them), but a threshold of -1 keeps every one.

Example:
    >>> RECIPES.get("diff-mix").layer("generate")["counterpart"]
    'cross-class'
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from diffcoremix.config import build_config, load_config_file
from diffcoremix.data.sources import DataConfig
from diffcoremix.errors import ConfigError, DiffCoReMixError
from diffcoremix.filter.config import FilterConfig
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.manifest.layout import (
    CONFIG_FILE,
    OutputFolder,
    OutputFolderError,
    augment_problem,
    read_augment_record,
)
from diffcoremix.prompts.builder import PromptsConfig
from diffcoremix.registry import Registry
from diffcoremix.train.comparison import BASELINE, CompareResult, MethodSpec, compare, parse_methods
from diffcoremix.train.config import TrainConfig

logger = logging.getLogger(__name__)

NO_FILTER = -1.0
"""The peers' threshold: a cosine is never below -1, so every candidate is kept (and still scored)."""
LABEL_PREFIX = "recipe:"
"""A recipe's row in a comparison is ``recipe:<name>``: the recipe ``diffcoremix`` and the method ``diffcoremix``
(mixing with whatever ``--synthetic`` holds) are different rows."""


class MissingSetError(DiffCoReMixError):
    """A recipe's synthetic set is missing, unfinished or another's: the message names the command that makes it."""


@dataclass(frozen=True)
class Recipe:
    """One peer's defaults, for every stage it sets (None: the stage's own default)."""

    name: str
    summary: str
    """One line, for listings."""
    citation: str
    """The paper and its public repository."""
    counterpart: str
    """GenerateConfig.counterpart."""
    method: str
    """The training method (``TrainConfig.method``; a usage mode or a mixer)."""
    mix_prob: float | None = None
    """The method's p (``--synthetic-prob``); None: the method has none (``fc`` adds every image)."""
    strength: tuple[float, ...] = ()
    """GenerateConfig.strength; empty: the mode's default."""
    soft_label_gamma: float | None = None
    guidance_scale: float | None = None
    """None: the generator preset's."""
    num_inference_steps: int | None = None
    """None: the generator preset's."""
    image_guidance_scale: float | None = None
    pack: str | None = None
    """PromptsConfig.pack; None: the mode's default pack."""
    threshold: float | None = None
    """FilterConfig.threshold; None: the filter's default (0.6, the paper's, for CLIP ViT-B/32)."""
    max_copy_similarity: float | None = None
    """FilterConfig.max_copy_similarity; None: no copy bound."""
    sources: tuple[str, ...] = ()
    """Where each default comes from, one line each (METHOD.md's facts, or "our choice")."""
    note: str | None = None
    """What a user must know before using it (a patent)."""

    @property
    def filtered(self) -> bool:
        """Whether the recipe rejects candidates (the peers keep every one)."""
        return self.threshold is None or self.threshold > NO_FILTER

    @property
    def needs_masks(self) -> bool:
        """Whether its counterparts need subject masks (``--masks DIR`` or ``--mask-from RUN``)."""
        return self.counterpart == "inpaint"

    @property
    def label(self) -> str:
        """Its row in a comparison (and, spelt safely, its run folders)."""
        return LABEL_PREFIX + self.name

    def layer(self, section: str) -> dict[str, Any]:
        """The recipe's options of one config section (``generate``, ``prompts``, ``filter``), as a config layer:
        only what it sets, under any ``--config`` file and flags. The generate layer names the recipe (recorded in
        OUT/config.yaml)."""
        values: dict[str, Any] = {}
        if section == "generate":
            values = {"recipe": self.name, "counterpart": self.counterpart, "strength": self.strength,
                      "soft_label_gamma": self.soft_label_gamma, "guidance_scale": self.guidance_scale,
                      "num_inference_steps": self.num_inference_steps,
                      "image_guidance_scale": self.image_guidance_scale}  # fmt: skip
        elif section == "prompts":
            values = {"pack": self.pack}
        elif section == "filter":
            values = {"threshold": self.threshold, "max_copy_similarity": self.max_copy_similarity}
        return {k: v for k, v in values.items() if v is not None and v != ()}

    def check_masks(self, generate: Mapping[str, Any]) -> None:
        """Refuse inpaint counterparts without their masks, in the recipe's words (the options merged over it).

        Raises:
            ConfigError: the merged options make inpaint counterparts and name neither masks nor a mask run.
        """
        merged = {**self.layer("generate"), **{str(k).replace("-", "_"): v for k, v in generate.items()}}
        if merged.get("counterpart") == "inpaint" and merged.get("masks") is None and merged.get("mask_from") is None:
            raise ConfigError("masks", None, f"a folder of subject masks (or --mask-from RUN, a train run whose "
                              f"Grad-CAM gives them) with --recipe {self.name}: it makes inpaint counterparts, "
                              "which keep each source's subject")  # fmt: skip

    def spec(self, synthetic: Path) -> MethodSpec:
        """Its row in a comparison: its method and p, trained on ``synthetic/<name>``."""
        return MethodSpec(self.label, self.method, "generated", set_folder(synthetic, self.name),
                          self.mix_prob)  # fmt: skip


RECIPES: Registry[Recipe] = Registry("recipe")

DIFFUSEMIX = Recipe(
    name="diffusemix",
    summary="each image edited (InstructPix2Pix), joined with its original by halves, a fractal blended in at 0.2, "
    "added (the sample's own label: its source's)",
    citation="Islam et al.: DiffuseMix, CVPR 2024; github.com/khawar-islam/diffuseMix",
    counterpart="edit",
    method="diffusemix",
    guidance_scale=4.0,
    pack="diffusemix",
    threshold=NO_FILTER,
    sources=(
        "counterpart edit, guidance 4: InstructPix2Pix (timbrooks/instruct-pix2pix) at guidance 4 (METHOD.md)",
        "pack diffusemix: its style prompts, as edit instructions (METHOD.md)",
        "method diffusemix: halves (random direction), then a fractal at 0.2, added; the original's hard label "
        "(METHOD.md; a soft-labelled sample keeps its soft label)",
        "no filter: its code keeps every edit (METHOD.md)",
        "not set: its EulerAncestral scheduler and 256 px (the preset's), and every prompt per image (the budget: "
        "--per-image)",
    ),
    note="A US patent record (US12657783B1) covers DiffuseMix's concatenation and fractal blending: decide whether "
    "you may use it.",
)
"""DiffuseMix (Islam et al., CVPR 2024; github.com/khawar-islam/diffuseMix): InstructPix2Pix edits every training
image with a style prompt (guidance 4); original and edit are joined by halves, then a fractal image is blended in at
0.2; hard label; added to the set. No filter. A US patent record (US12657783B1) covers this concatenation and fractal
blending. Offline, the tiny preset's edit model (``builtin:tiny-ip2p``) stands in for InstructPix2Pix."""

DIFF_MIX = Recipe(
    name="diff-mix",
    summary="img2img of a source of class A with the prompt of class B, soft label, global random replacement",
    citation="Wang et al.: Diff-Mix, CVPR 2024; github.com/Zhicaiwww/Diff-Mix",
    counterpart="cross-class",
    method="grr",
    mix_prob=0.1,
    strength=(0.3, 0.5, 0.7, 0.9),
    soft_label_gamma=0.5,
    num_inference_steps=25,
    threshold=NO_FILTER,
    sources=(
        "counterpart cross-class, strengths 0.3 0.5 0.7 0.9, 25 steps: its img2img with DPM-Solver (METHOD.md)",
        "soft label (1 - s^0.5) A + s^0.5 B: gamma 0.5, DiffDA-Eval's CUB config (METHOD.md)",
        "method grr, p 0.1: its default (METHOD.md)",
        "no filter (METHOD.md)",
        "not set: its DreamBooth-LoRA and textual inversion (fine-tune the generator: diffcoremix finetune), "
        "DPM-Solver (the preset's scheduler)",
    ),
)
"""Diff-Mix (Wang et al., CVPR 2024; github.com/Zhicaiwww/Diff-Mix): img2img of a source of class A with the prompt of
a random class B at a strength from {0.3, 0.5, 0.7, 0.9}, 25 steps; soft label (1 - s^g) A + s^g B with g = 0.5;
global random replacement (GRR) with p = 0.1. No filter."""

DA_FUSION = Recipe(
    name="da-fusion",
    summary="img2img at mixed strengths, local random replacement (a sample becomes its own counterpart)",
    citation="Trabucco et al.: DA-Fusion, ICLR 2024; github.com/brandontrabucco/da-fusion",
    counterpart="img2img",
    method="lrr",
    mix_prob=0.5,
    strength=(1.0, 0.75, 0.5, 0.25),
    threshold=NO_FILTER,
    sources=(
        "counterpart img2img, strengths 1.0 0.75 0.5 0.25: its mixed strengths (METHOD.md)",
        "method lrr, p 0.5, same label (METHOD.md)",
        "no filter (METHOD.md)",
        "not set: its textual-inversion token per class (fine-tune the generator), its 15 variants per image "
        "(the budget: --per-image)",
    ),
)
"""DA-Fusion (Trabucco et al., ICLR 2024; github.com/brandontrabucco/da-fusion): Stable Diffusion img2img with strengths
mixed among 1.0, 0.75, 0.5 and 0.25; local random replacement (LRR) with p = 0.5, label kept (a counterpart with a
soft label brings it). No filter."""

REAL_GUIDANCE = Recipe(
    name="real-guidance",
    summary="img2img from the real image at a low strength, added (full concatenation)",
    citation="He et al.: Is synthetic data from generative models ready for image "
    "recognition?, ICLR 2023; github.com/CVMI-Lab/SyntheticData",
    counterpart="img2img",
    method="fc",
    strength=(0.3,),
    threshold=NO_FILTER,
    sources=(
        "counterpart img2img from the real image, with the class prompt; method fc (METHOD.md)",
        "strength 0.3: our choice for its 'low strength' (METHOD.md gives no number)",
        "no filter (METHOD.md)",
        "not set: its prompt is the class name alone (here the default pack's contextual prompt)",
    ),
)
"""Real-Guidance (He et al., ICLR 2023; github.com/CVMI-Lab/SyntheticData): img2img from the real image at a low
strength with the class prompt; full concatenation (FC). The strength 0.3 is this project's choice. No filter."""

DIFFCOREMIX = Recipe(
    name="diffcoremix",
    summary="text counterparts from contextual prompts, filtered, mixed at pixel or patch level (the paper's method)",
    citation="Islam and Akhtar: Context-guided Responsible Data Augmentation with Diffusion Models, ICLR 2025 workshop "
    "(arXiv 2503.10687); github.com/khawar-islam/DiffCoRe-Mix",
    counterpart="text",
    method="diffcoremix",
    mix_prob=0.5,
    sources=(
        "counterpart text, the filter at its defaults (prototype, 0.6): the paper's method (METHOD.md)",
        "method diffcoremix (mix: pixel or patch), p 0.5: our default (METHOD.md, the project's method)",
    ),
)
"""DiffCoRe-Mix (Islam and Akhtar, ICLR 2025 workshop, arXiv 2503.10687; github.com/khawar-islam/DiffCoRe-Mix): text
counterparts from contextual and negative prompts, the hard cosine filter at its defaults, pixel and patch mixing with
p = 0.5 (METHOD.md's method; the project's default)."""

DIFFCOREMIX_PLUS = Recipe(
    name="diffcoremix+",
    summary="inpainted counterparts (the subject kept), filtered with a copy bound, mixed (our best counterparts)",
    citation="this project (benchmarks/README.md: text against image-conditioned counterparts), over DiffCoRe-Mix "
    "(arXiv 2503.10687; github.com/khawar-islam/DiffCoRe-Mix)",
    counterpart="inpaint",
    method="diffcoremix",
    mix_prob=0.5,
    max_copy_similarity=0.975,
    sources=(
        "counterpart inpaint: the image-conditioned mode with the highest judge agreement and lowest KID "
        "(benchmarks/README.md); needs --masks DIR or --mask-from RUN",
        "filter at its defaults, copy bound 0.975: about the pooled 99th percentile of real nearest-neighbour "
        "cosines in ResNet-20 features on CIFAR-10 (benchmarks/README.md); embedder-dependent: calibrate yours "
        "(filter --calibrate)",
        "method diffcoremix (mix), p 0.5: our default",
    ),
)
"""DiffCoRe-Mix with this project's best counterparts (benchmarks/README.md, the counterparts issue): inpainted
counterparts (the subject kept, the background redrawn; masks from ``--masks`` or ``--mask-from``), the filter at its
defaults plus a copy bound of 0.975 (about the pooled 99th percentile of each real image's cosine with its nearest other
real image of the class, in ResNet-20 features on CIFAR-10: the bound depends on the embedder), mixed with p = 0.5."""

for _recipe in (DIFFUSEMIX, DIFF_MIX, DA_FUSION, REAL_GUIDANCE, DIFFCOREMIX, DIFFCOREMIX_PLUS):
    RECIPES.add(_recipe.name, _recipe)


def parse_recipes(names: str | Sequence[str]) -> list[Recipe]:
    """Recipes from ``"diff-mix,da-fusion"`` (or a list of names), in the order given.

    Raises:
        UnknownNameError: an unknown name (the message lists the recipes).
        ConfigError: none, or one twice.
    """
    items = [names] if isinstance(names, str) else list(names)
    parts = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not parts or len(set(parts)) != len(parts):
        raise ConfigError("recipes", names, f"one or more different recipes of {', '.join(RECIPES.names())}")
    return [RECIPES.get(part) for part in parts]


def set_folder(synthetic: str | Path, name: str) -> Path:
    """A recipe's synthetic set: ``SYN/<name>``."""
    return Path(synthetic) / name


def recorded_recipe(folder: str | Path) -> str | None:
    """The recipe that OUT/config.yaml names (``augment --recipe``); None when it names none or cannot be read."""
    try:
        document = yaml.safe_load((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    generate = document.get("generate") if isinstance(document, dict) else None
    name = generate.get("recipe") if isinstance(generate, dict) else None
    return name if isinstance(name, str) else None


def set_problem(folder: Path, recipe: Recipe) -> str | None:
    """Why ``folder`` is not (yet) the recipe's finished synthetic set, in words that follow its path; None if it is.

    Finished: an output of ours, made with ``--recipe NAME``, every generated image decided by the filter, and (for a
    set that ``augment`` made) its last round done: ``OUT/augment.json``.
    """
    if not folder.exists():
        return "does not exist"
    problem = OutputFolder(folder).run_record_problem()
    if problem is not None:
        return f"{problem} (not a generation run)"
    if not (folder / CONFIG_FILE).is_file():
        return f"has no {CONFIG_FILE} yet (unfinished)"
    made_by = recorded_recipe(folder)
    if made_by != recipe.name:
        return f"was made by {'recipe ' + made_by if made_by else 'no recipe'}, not {recipe.name}"
    unfinished = augment_problem(folder)
    if unfinished is not None:
        return f"is unfinished: {unfinished}"
    from diffcoremix.manifest.records import read_manifest

    table = read_manifest(folder)
    made = table[table.status == "ok"]
    if len(made) == 0:
        return "holds no generated image (unfinished)"
    if "accepted" not in table.columns or made.accepted.isna().any():
        return "has not been filtered (unfinished)"
    return None


def augment_command(
    recipe: Recipe,
    data: str | Path,
    synthetic: str | Path,
    *,
    config: str | Path | None = None,
    data_config: DataConfig | None = None,
) -> str:
    """The ``diffcoremix augment`` command line that makes (or resumes) a recipe's set under ``synthetic``."""
    words = ["diffcoremix", "augment", str(data), "-o", str(set_folder(synthetic, recipe.name)), "--recipe",
             recipe.name]  # fmt: skip
    if config is not None:
        words += ["--config", str(config)]
    if data_config is not None and data_config.classes:
        words += ["--classes", ",".join(data_config.classes)]
    if data_config is not None and data_config.max_per_class is not None:
        words += ["--max-per-class", str(data_config.max_per_class)]
    if recipe.needs_masks and not _config_names_masks(config):
        words += ["--masks", "DIR"]  # or --mask-from RUN: said after the command
    retries = recorded_retries(set_folder(synthetic, recipe.name))
    if retries:
        words += ["--retries", str(retries)]
    return shlex.join(words)


def _config_names_masks(config: str | Path | None) -> bool:
    if config is None:
        return False
    generate = load_config_file(config, "generate")
    return any(generate.get(k) is not None for k in ("masks", "mask_from", "mask-from"))


def check_sets(
    recipes: Sequence[Recipe],
    data: str | Path,
    synthetic: str | Path,
    *,
    config: str | Path | None = None,
    data_config: DataConfig | None = None,
) -> list[Recipe]:
    """The recipes whose set under ``synthetic`` is missing or unfinished (``--build`` makes those).

    Raises:
        MissingSetError: a set made by another recipe, or without one (``--build`` leaves it alone).
    """
    missing = []
    for recipe in recipes:
        folder = set_folder(synthetic, recipe.name)
        problem = set_problem(folder, recipe)
        if problem is None:
            continue
        if problem.startswith("was made by"):
            command = augment_command(recipe, data, synthetic, config=config, data_config=data_config)
            raise MissingSetError(f"the synthetic set of recipe {recipe.name}, {folder}, {problem}: move it away, or "
                                  f"make it again with `{command} --overwrite`")  # fmt: skip
        missing.append(recipe)
    return missing


def missing_sets_message(
    missing: Sequence[Recipe],
    data: str | Path,
    synthetic: str | Path,
    *,
    config: str | Path | None = None,
    data_config: DataConfig | None = None,
) -> str:
    """One line: the first missing set, the command that makes it, and how many more there are."""
    first = missing[0]
    folder = set_folder(synthetic, first.name)
    command = augment_command(first, data, synthetic, config=config, data_config=data_config)
    more = ""
    if len(missing) > 1:
        others = ", ".join(r.name for r in missing[1:])
        more = f" (and the same for {others})"
    masks = " (DIR: its subject masks; or --mask-from RUN)" if command.endswith("--masks DIR") else ""
    return (f"the synthetic set of recipe {first.name} is missing: {folder} {set_problem(folder, first)}; make it "
            f"with `{command}`{masks}{more}, or add --build to make every missing set first")  # fmt: skip


def recipe_configs(
    recipe: Recipe, config: str | Path | None = None
) -> tuple[PromptsConfig, GenerateConfig, FilterConfig]:
    """The prompts, generate and filter configs of a recipe's set: defaults < recipe < the ``config`` file's sections
    (the precedence of ``augment --recipe NAME --config FILE``, so the command :func:`augment_command` names makes the
    same set); the set is named by the recipe's own name whatever the file says.

    Raises:
        ConfigError, UnknownNameError: an option is invalid, or inpaint counterparts lack their masks.
    """

    def layers(section: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return recipe.layer(section), (load_config_file(config, section) if config is not None else {})

    generate = layers("generate")
    recipe.check_masks(generate[1])
    return (
        build_config(PromptsConfig, *layers("prompts"), section="prompts"),
        build_config(GenerateConfig, *generate, {"recipe": recipe.name}, section="generate"),  # its own name
        build_config(FilterConfig, *layers("filter"), section="filter"),
    )


def build_sets(
    recipes: Sequence[Recipe],
    data: str | Path,
    synthetic: str | Path,
    *,
    config: str | Path | None = None,
    data_config: DataConfig | None = None,
    progress: bool = False,
) -> None:
    """Make (or resume) each recipe's set under ``synthetic`` with :func:`~diffcoremix.augmentation.augment`: the
    recipe's settings under the ``config`` file's generate, prompts and filter sections."""
    from diffcoremix.augmentation import augment

    for recipe in recipes:
        prompts, generate, filter_config = recipe_configs(recipe, config)
        folder = set_folder(synthetic, recipe.name)
        retries = recorded_retries(folder)  # an unfinished augment --retries R resumes with its R
        logger.info("making the synthetic set of recipe %s: %s", recipe.name, folder)
        augment(data, folder, prompts, generate, filter_config, data_config=data_config, retries=retries,
                progress=progress)  # fmt: skip


def recorded_retries(folder: Path) -> int:
    """The retries of the augment run that made ``folder`` (0 without a readable record)."""
    try:
        record = read_augment_record(folder)
    except OutputFolderError:
        return 0
    return record.retries if record is not None else 0


def compare_recipes(
    data: str | Path,
    recipes: str | Sequence[str],
    seeds: str | Sequence[int],
    *,
    synthetic: str | Path,
    methods: str | Sequence[str] = BASELINE,
    config: TrainConfig | None = None,
    config_file: str | Path | None = None,
    build: bool = False,
    output: str | Path,
    val: str | Path | None = None,
    test: str | Path | None = None,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> CompareResult:
    """``compare --recipes``: each recipe trained on ``synthetic/<name>`` with its method and p, beside ``methods``.

    Args:
        recipes: recipe names, ``"diff-mix,da-fusion"``.
        synthetic: SYN, the folder of the recipes' sets (``SYN/<name>``).
        methods: the other rows (``none`` is the baseline); they may not read ``synthetic`` (it is SYN, not a set).
        config_file: the ``--config`` file whose generate, prompts and filter sections ``build`` uses.
        build: make the missing or unfinished sets first (after every input is checked).
        The rest: as :func:`~diffcoremix.train.comparison.compare`.

    Raises:
        MissingSetError: a set is missing or unfinished and ``build`` is false: one line naming its augment command.
        UnknownNameError, ConfigError, CompareError: bad input, before any run.
    """
    chosen = parse_recipes(recipes)
    config = config or TrainConfig()
    rows = parse_methods(methods, partners=config.partners)
    for row in rows:
        if row.train_config(config).needs_synthetic:
            why = "(--synthetic is the folder of the recipes' sets there): compare it on its own"
            raise ConfigError("methods", row.label, f"a method without generated images next to --recipes {why}")
    missing = check_sets(chosen, data, synthetic, config=config_file, data_config=data_config)
    if missing and not build:
        raise MissingSetError(missing_sets_message(missing, data, synthetic, config=config_file,
                                                   data_config=data_config))  # fmt: skip
    for recipe in missing:  # a --build that would fail on masks fails before any run
        recipe_configs(recipe, config_file)
    specs = [*rows, *(r.spec(Path(synthetic)) for r in chosen)]

    def prepare() -> None:
        build_sets(missing, data, synthetic, config=config_file, data_config=data_config, progress=progress)

    return compare(data, specs, seeds, config=config, output=output, val=val, test=test, data_config=data_config,
                   overwrite=overwrite, progress=progress, prepare=prepare if missing else None)  # fmt: skip


def describe(recipe: Recipe) -> list[str]:
    """The listing's lines of a recipe (``diffcoremix presets``)."""
    p = "" if recipe.mix_prob is None else f", p {recipe.mix_prob:g}"
    if not recipe.filtered:
        kept = "none (every candidate kept, still scored)"
    else:
        kept = f"threshold {recipe.threshold:g}" if recipe.threshold is not None else "the defaults"
        if recipe.max_copy_similarity is not None:
            kept += f", copy bound {recipe.max_copy_similarity:g}"
    lines = [recipe.summary, f"counterpart {recipe.counterpart}; method {recipe.method}{p}; filter {kept}",
             recipe.citation]  # fmt: skip
    return lines + ([recipe.note] if recipe.note else [])
