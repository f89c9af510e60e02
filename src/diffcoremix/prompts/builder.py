"""Contextual and negative prompts for every planned candidate: what ``diffcoremix prompts`` previews and what
generation will use.

Example:
    >>> plan = build_prompts("data/cars", PromptsConfig(pack="paper", domain="car"))  # doctest: +SKIP
    >>> plan.records[0].negative_prompt  # "car" dropped: it is the domain word  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffcoremix.atomic import atomic_writer
from diffcoremix.classifiers import RunError
from diffcoremix.config import check_types, require
from diffcoremix.counterparts import (
    PLAN_BYTES_PER_CANDIDATE,
    Candidate,
    CandidatePlan,
    candidate_plan,
    check_plan_fits,
    hard_fraction,
)
from diffcoremix.data.classnames import load_class_map
from diffcoremix.data.folder import DatasetListing, list_images
from diffcoremix.embedders import DEFAULT_EMBEDDER, default_embedder
from diffcoremix.errors import ConfigError
from diffcoremix.modes import COUNTERPART_MODES, CounterpartSettings, soft_label
from diffcoremix.prompts.context import CONTEXT_SELECTORS, ContextRequest, ContextSelector, SelectorOptions
from diffcoremix.prompts.hardness import run_weights_id, source_losses
from diffcoremix.prompts.negatives import NegativeConflict, filter_negatives
from diffcoremix.prompts.packs import PromptPack, load_pack
from diffcoremix.seeds import derive_seed, stable_choice
from diffcoremix.sequences import LazySequence

logger = logging.getLogger(__name__)

HEX = "0123456789abcdef"


DEFAULT_PACK = "generic"
COUNTERPART_PACKS = {"edit": "diffusemix"}
"""The pack of a counterpart mode whose prompts are of another kind (edit: instructions), when none is given."""


@dataclass(frozen=True)
class PromptsConfig:
    """Options of the prompt stage (``diffcoremix prompts``; later also ``generate`` and ``augment``)."""

    pack: str | None = None
    """Prompt pack: a shipped name (see ``diffcoremix packs``) or the path of a pack YAML file; null is generic, or
    diffusemix (edit instructions) with --counterpart edit."""
    domain: str | None = None
    """Domain word filling ``{domain}``; null takes the pack's own (e.g. use "car" with the paper pack on cars)."""
    context: str = "random"
    """How a context is chosen per candidate: random (the pack's bank, uniformly), fixed (from --contexts), or
    sample (the pack's contexts ranked by image-text similarity to the source image; top-k drawn)."""
    contexts: tuple[str, ...] = ()
    """The user's contexts, for --context fixed."""
    top_k: int = 3
    """For --context sample: draw among the k contexts that best match the source image."""
    context_embedder: str | None = None
    """For --context sample: the image-text embedder that ranks contexts; null is open_clip:ViT-B-32:openai, or
    tiny (offline, random weights) when generating with a built-in preset (tiny, tiny-sdxl)."""
    fraction: float = 1.0
    """Share of each class's images that get counterparts, chosen at random (seeded), in (0, 1]; the reference
    code used 0.3. Must be 1 with --sources hard:F, which sets the share itself."""
    sources: str = "all"
    """Which images get counterparts: all (or a random --fraction of each class), or hard:F, the share F of each
    class on which the --rank-by run's loss is the highest (TADA, DisCL: the budget goes where the classifier
    struggles); each record then holds its source's rank in its class (1: the hardest) and that loss."""
    rank_by: str | None = None
    """For --sources hard:F: a finished `diffcoremix train` run folder whose model ranks the images by loss."""
    rank_by_sha256: str | None = None
    """For --sources hard:F: the SHA-256 of the --rank-by run's model.pt; null takes what it holds now (a run
    records it, so a resume after the run was retrained is refused as other settings)."""
    per_image: int = 1
    """Counterparts per selected image (K)."""
    seed: int = 0
    """Base seed: image selection, template, context and generation seeds all derive from it."""
    class_map: str | None = None
    """CSV (folder,name) or JSON ({folder: name}) file renaming classes in prompts."""

    def __post_init__(self) -> None:
        check_types(self)
        require(0.0 < self.fraction <= 1.0, "fraction", self.fraction, "in (0, 1]")
        require(self.per_image >= 1, "per_image", self.per_image, ">= 1")
        require(self.top_k >= 1, "top_k", self.top_k, ">= 1")
        require(self.seed >= 0, "seed", self.seed, ">= 0")
        known = CONTEXT_SELECTORS.names()
        require(self.context in known, "context", self.context, "one of " + ", ".join(known))
        require(self.domain is None or bool(self.domain.strip()), "domain", self.domain, "a non-empty word")
        ce = self.context_embedder
        require(ce is None or bool(ce.strip()), "context_embedder", ce, "a non-empty embedder spec or null")
        self._check_sources()
        if self.context == "fixed":
            require(bool(self.contexts), "contexts", self.contexts, "at least one context with context=fixed")
        else:
            require(not self.contexts, "contexts", self.contexts, "empty unless context=fixed")

    def _check_sources(self) -> None:
        hard = hard_fraction(self.sources)  # ConfigError unless all or hard:F
        if hard is None:
            require(self.rank_by is None, "rank_by", self.rank_by, "null unless sources=hard:F")
        else:
            rank_by = self.rank_by
            given = rank_by is not None and bool(rank_by.strip())
            require(given, "rank_by", rank_by, f"a finished `train` run folder with sources={self.sources}")
            share = f"1 with sources={self.sources}, which chooses the share of each class itself"
            require(self.fraction == 1.0, "fraction", self.fraction, share)
        digest = self.rank_by_sha256
        require(digest is None or (self.rank_by is not None and len(digest) == 64 and set(digest) <= set(HEX)),
                "rank_by_sha256", digest, "null, or 64 hex digits with rank_by")  # fmt: skip

    def for_generator(self, model: str | None, counterpart: str = "text") -> PromptsConfig:
        """These options with the defaults resolved for images of ``model`` (the generator) in mode ``counterpart``:
        the context embedder, and the pack; and the --rank-by run named by the SHA-256 of its weights (a retrained
        run is another plan).

        Raises:
            RunError: the --rank-by folder is not a finished run. ConfigError: its weights are not
                ``rank_by_sha256``.
        """
        pack = self.pack if self.pack is not None else COUNTERPART_PACKS.get(counterpart, DEFAULT_PACK)
        embedder = self.context_embedder if self.context_embedder is not None else default_embedder(model)
        ranked_by = self.rank_by_weights() if self.rank_by is not None else None
        return dataclasses.replace(self, context_embedder=embedder, pack=pack, rank_by_sha256=ranked_by)

    def rank_by_weights(self) -> str:
        """The SHA-256 of the --rank-by run's ``model.pt``, checked against ``rank_by_sha256`` when that is set.

        Raises:
            RunError: no --rank-by run, or not a finished one. ConfigError: its weights are not
                ``rank_by_sha256`` (the run was retrained since).
        """
        if self.rank_by is None:
            raise RunError("no --rank-by run to rank the sources by")
        digest = run_weights_id(self.rank_by)
        if self.rank_by_sha256 is not None and self.rank_by_sha256 != digest:
            now = f"the SHA-256 of {self.rank_by}/model.pt, {digest}: the run was trained again since"
            raise ConfigError("rank_by_sha256", self.rank_by_sha256, now)
        return digest


@dataclass(frozen=True)
class PromptRecord:
    """The prompt of one planned candidate (one line of ``prompts.jsonl``)."""

    key: str
    source: str
    class_folder: str
    class_name: str
    label: int
    k: int
    seed: int
    """The generation seed of this candidate."""
    prompt: str
    negative_prompt: str
    context: str
    context_score: float | None
    template: str
    dropped_negatives: tuple[str, ...]
    attempt: int = 0
    """0 for a planned candidate; r for its r-th regeneration after a rejection (``augment --retries``)."""
    counterpart: str = "text"
    """The counterpart mode (:mod:`diffcoremix.modes`)."""
    strength: float | None = None
    """The strength this candidate is made at (drawn from the mode's strengths by its key), for modes that have one."""
    source_class_folder: str | None = None
    """For cross-class: the source's class A (``class_folder`` is then the soft label's dominant class)."""
    target_class_folder: str | None = None
    """For cross-class: the class B whose prompt the source is redrawn with."""
    soft_label: dict[str, float] | None = None
    """For cross-class: ``{A: 1 - s**g, B: s**g}``; None: the hard label of ``class_folder``."""
    source_rank: int | None = None
    """With ``sources="hard:F"``: the source's rank in its class by the --rank-by run's loss (1: the hardest)."""
    source_loss: float | None = None
    """With ``sources="hard:F"``: the --rank-by run's cross-entropy on the source, against its class."""

    def condition(self) -> str | None:
        """What, besides prompt, seed and settings, a counterpart's pixels depend on (None for text): compared on
        resume."""
        if self.counterpart == "text":
            return None
        return json.dumps([self.counterpart, self.strength, self.source_class_folder, self.target_class_folder])

    def retry(self, attempt: int) -> PromptRecord:
        """The same candidate's ``attempt``-th regeneration: same prompt, a new derived seed and key."""
        base = self.key.split("@", 1)[0]
        return dataclasses.replace(
            self, key=f"{base}@r{attempt}", seed=derive_seed(self.seed, "retry", attempt), attempt=attempt
        )

    def to_json(self) -> str:
        record: dict[str, Any] = asdict(self)
        record["dropped_negatives"] = list(self.dropped_negatives)
        return json.dumps(record, ensure_ascii=False)


PLAN_BLOCK = 4096
"""Candidates whose contexts are chosen in one call of the selector. The blocks are fixed by plan position, so a
candidate's context (and its score, which batched embedding can round differently in another batch) is the same
whichever shard, batch size or rerun builds it."""


class PromptPlan(LazySequence[PromptRecord]):
    """The prompts of every planned candidate, built block by block on access: a plan of any size takes the memory
    of a block, not of its candidates.

    ``plan[i]``, ``plan[i:j]`` and iteration build what they return; ``records`` is the whole plan as a list (for
    small plans and tests). ``conflicts`` counts the negative terms dropped in the blocks built so far.
    """

    def __init__(
        self,
        candidates: CandidatePlan,
        *,
        root: Path,
        names: Mapping[str, str],
        pack: PromptPack,
        config: PromptsConfig,
        selector: ContextSelector,
        counterpart: CounterpartSettings | None = None,
        classes: Sequence[str] = (),
    ) -> None:
        self.candidates, self.root, self.names = candidates, root, names
        self.counterpart = counterpart
        self.labels = {cls: label for label, cls in enumerate(classes)}
        used = {candidate.class_folder for candidate in candidates.sources}
        self.targets = [cls for cls in classes if cls in used]
        """The classes a cross-class candidate may take its prompt from: those the plan uses (a class left out by
        ``--classes``, or one without images, is none)."""
        if counterpart is not None and COUNTERPART_MODES.get(counterpart.mode).cross_class and len(self.targets) < 2:
            raise ConfigError("counterpart", counterpart.mode, "a dataset of two or more classes (it redraws an "
                              "image of one class with the prompt of another)")  # fmt: skip
        self.pack, self.config, self.selector = pack, config, selector
        self.domain = config.domain or pack.domain
        self.conflicts: Counter[NegativeConflict] = Counter()
        """How many prompts dropped each (term, where, text) conflict, over the blocks built so far."""
        self._counted: set[int] = set()
        self._warned: set[NegativeConflict] = set()
        self._last: tuple[int, list[PromptRecord]] = (-1, [])

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def sources(self) -> int:
        """How many images of DATA the plan makes counterparts of."""
        return len(self.candidates.sources)

    def _slice(self, start: int, stop: int) -> list[PromptRecord]:
        records: list[PromptRecord] = []  # nothing is built for an empty slice
        for number in range(start // PLAN_BLOCK, -(-stop // PLAN_BLOCK) if stop > start else 0):
            first = number * PLAN_BLOCK
            records += self.block(number)[max(start - first, 0) : stop - first]
        return records

    def __iter__(self) -> Iterator[PromptRecord]:
        for number in range(-(-len(self) // PLAN_BLOCK)):
            yield from self.block(number)

    @property
    def records(self) -> list[PromptRecord]:
        """The whole plan as a list (it is built each time: use iteration or slices for large plans)."""
        return list(self)

    def block(self, number: int) -> list[PromptRecord]:
        """The records of block ``number`` (candidates ``number * PLAN_BLOCK`` on), the last one built kept."""
        if self._last[0] != number:
            self._last = (number, self._build(self.candidates[number * PLAN_BLOCK : (number + 1) * PLAN_BLOCK], number))
        return self._last[1]

    def _plan_mode(self, candidate: Candidate) -> dict[str, Any]:
        """The candidate's mode fields: its strength, and for cross-class its other class, label and dominant class."""
        mode = self.counterpart
        if mode is None:
            return {}
        seed, key = self.config.seed, candidate.key
        fields: dict[str, Any] = {"counterpart": mode.mode}
        if mode.strength:
            fields["strength"] = mode.strength[stable_choice(len(mode.strength), seed, "strength", key)]
        if mode.soft_label_gamma is None:
            return fields
        source = candidate.class_folder
        others = [cls for cls in self.targets if cls != source]
        target = others[stable_choice(len(others), seed, "cross-class", key)]
        soft = soft_label(source, target, fields["strength"], mode.soft_label_gamma)
        dominant = target if soft[target] >= soft[source] else source
        return fields | {"source_class_folder": source, "target_class_folder": target, "soft_label": soft,
                         "class_folder": dominant, "label": self.labels[dominant]}  # fmt: skip

    def _build(self, candidates: list[Candidate], number: int) -> list[PromptRecord]:
        config, pack, domain = self.config, self.pack, self.domain
        modes = [self._plan_mode(c) for c in candidates]
        requests = [
            ContextRequest(
                key=c.key,
                source=self.root / c.source,
                class_name=self.names[mode.get("target_class_folder", c.class_folder)],  # whose prompt it gets
                seed=derive_seed(config.seed, "context", c.key),
            )
            for c, mode in zip(candidates, modes, strict=True)
        ]
        choices = self.selector.choose(requests)
        if len(choices) != len(requests):
            raise RuntimeError(f"context selector returned {len(choices)} choices for {len(requests)} requests")
        records: list[PromptRecord] = []
        conflicts: Counter[NegativeConflict] = Counter()
        for candidate, request, choice, mode in zip(candidates, requests, choices, modes, strict=True):
            template = pack.templates[stable_choice(len(pack.templates), config.seed, "template", candidate.key)]
            prompt = " ".join(template.format(name=request.class_name, domain=domain, context=choice.text).split())
            template_text = template.replace("{name}", " ").replace("{domain}", " ").replace("{context}", " ")
            kept, dropped = filter_negatives(
                pack.negative,
                [
                    ("class name", request.class_name),
                    ("domain word", domain if "{domain}" in template else ""),
                    ("context", choice.text if "{context}" in template else ""),
                    ("template", template_text),
                ],
            )
            conflicts.update(dropped)
            class_folder = mode.pop("class_folder", candidate.class_folder)
            records.append(
                PromptRecord(
                    key=candidate.key,
                    source=candidate.source,
                    class_folder=class_folder,
                    class_name=self.names[class_folder],
                    label=mode.pop("label", candidate.label),
                    k=candidate.k,
                    seed=candidate.seed,
                    prompt=prompt,
                    negative_prompt=", ".join(kept),
                    context=choice.text,
                    context_score=choice.score,
                    template=template,
                    dropped_negatives=tuple(c.term for c in dropped),
                    source_rank=candidate.source_rank,
                    source_loss=candidate.source_loss,
                    **mode,
                )
            )
        if number not in self._counted:  # a block built again (another pass) is not counted twice
            self._counted.add(number)
            self.conflicts.update(conflicts)
        return records

    def check_fits(self, bytes_per_candidate: int = PLAN_BYTES_PER_CANDIDATE) -> None:
        """Refuse (one-line :class:`ConfigError`) a plan whose run would not fit in memory at this cost per
        candidate (:func:`~diffcoremix.counterparts.check_plan_fits`)."""
        check_plan_fits(self.sources, self.config.per_image, bytes_per_candidate)

    def write_jsonl(self, path: str | Path) -> Path:
        """Write one JSON record per line (atomically, streamed block by block); the same plan gives the same
        bytes."""
        with atomic_writer(path) as handle:
            for record in self:
                handle.write((record.to_json() + "\n").encode("utf-8"))
        return Path(path)

    def warn_conflicts(self) -> None:
        """Log one warning per distinct conflict not warned of yet, with the number of prompts it affected (in the
        blocks built so far: iterate the plan first for the whole count)."""
        for conflict, count in sorted(self.conflicts.items(), key=lambda kv: (kv[0].term, kv[0].text)):
            if conflict not in self._warned:
                self._warned.add(conflict)
                logger.warning("%s: dropped from %d prompt(s)", conflict.describe(), count)


def build_prompts(
    data: str | Path | DatasetListing,
    config: PromptsConfig | None = None,
    *,
    selector: ContextSelector | None = None,
    counterpart: CounterpartSettings | None = None,
    progress: bool = False,
) -> PromptPlan:
    """Plan the candidates of a dataset and compose a prompt and a negative prompt for each.

    Nothing per candidate is built here: the plan builds its records block by block when they are read.

    Args:
        data: a class-folder dataset, or its listing.
        config: prompt options (defaults if omitted).
        selector: a context selector instance to use instead of ``config.context``'s (for selectors that need
            objects, such as an embedder, that a config cannot name).
        counterpart: the counterpart mode's settings (None: text), which draw each candidate's strength and, for
            cross-class, its other class.
        progress: a progress bar while ``sources="hard:F"`` computes the --rank-by run's loss on every image.

    Returns:
        The plan (a sequence of :class:`PromptRecord`); ``write_jsonl()`` saves it, ``warn_conflicts()`` reports
        the negative terms dropped from the prompts built so far.

    Raises:
        DatasetError, PackError, ClassMapError, UnknownNameError: bad dataset, pack or class map (DatasetError
            too: a class that the --rank-by run does not know).
        RunError, ConfigError: the --rank-by folder is not a finished run, or not the weights of ``rank_by_sha256``.
    """
    config = config or PromptsConfig()
    listing = data if isinstance(data, DatasetListing) else list_images(data)
    pack = load_pack(config.pack or DEFAULT_PACK)
    names = listing.class_names(load_class_map(config.class_map) if config.class_map else None)
    hard = hard_fraction(config.sources)
    losses = None
    if hard is not None:  # each process that builds the plan computes the same losses (see prompts.hardness)
        config.rank_by_weights()  # the weights that a resolved config names, and no other
        losses = source_losses(str(config.rank_by), listing, progress=progress)
    candidates = candidate_plan(listing, fraction=hard or config.fraction, per_image=config.per_image,
                                seed=config.seed, losses=losses)  # fmt: skip
    if selector is None:
        options = SelectorOptions(config.contexts, config.top_k, config.context_embedder or DEFAULT_EMBEDDER)
        selector = CONTEXT_SELECTORS.get(config.context)(pack, options)
    return PromptPlan(candidates, root=listing.root, names=names, pack=pack, config=config, selector=selector,
                      counterpart=counterpart, classes=listing.classes)  # fmt: skip
