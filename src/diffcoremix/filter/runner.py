"""``diffcoremix filter``: the hard cosine filtration of a generation run (METHOD.md §6).

Every generated candidate of OUT is embedded and compared with its reference (a rule of
:mod:`diffcoremix.filter.references`); it is accepted iff ``score >= threshold`` (and, with a text check, iff its
similarity to "a photo of a {class}" is ``>= text_check`` too).

The filter also measures copying, which no threshold can see (a copy of a training image is as close to its class
as can be): every candidate's nearest real image (of its class, or its own source) and their cosine are recorded,
whatever the options; with ``max_copy_similarity``, a candidate above that bound is rejected as a copy. The report
counts the copies per class (above the bound, or above 0.95 for information when there is none).

The steps, in order: read the candidates, decode the real images of the candidates' classes and their sources
(naming those that cannot be used; no other image of DATA is decoded), load the embedder, embed those real images,
score and decide, then write the decisions (``OUT/filter.jsonl``, joined into :func:`read_manifest`), the
``train/`` and ``rejected/`` views (see :mod:`diffcoremix.manifest.decisions`), the report and the histograms.
Real and generated embeddings are cached on disk; files whose content would not change are not rewritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcoremix.atomic import write_text_if_changed
from diffcoremix.cells import text_cell
from diffcoremix.config import write_resolved_config
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.folder import DatasetListing
from diffcoremix.data.sources import DataConfig, ImageCheck
from diffcoremix.devices import resolve_device
from diffcoremix.embedders import default_embedder
from diffcoremix.embedders.cache import EmbeddingCache, EmbedFiles, embed_files, prune
from diffcoremix.embedders.models import Embedder, load_embedder
from diffcoremix.errors import DatasetError, ImageReadError
from diffcoremix.filter.config import NEAR_COPY_SIMILARITY, FilterConfig
from diffcoremix.filter.plots import render_histograms
from diffcoremix.filter.references import (
    RealIndex,
    nearest_real,
    nearest_real_scores,
    score_candidates,
    suggest_threshold,
)
from diffcoremix.manifest.decisions import relayout, write_decisions
from diffcoremix.manifest.layout import (
    CACHE_DIR,
    CALIBRATION_FILE,
    FILTER_CONFIG_FILE,
    FILTER_REPORT_FILE,
    REPORT_DIR,
    SETTINGS_FILE,
    OutputFolder,
    check_separate,
)
from diffcoremix.manifest.ownership import open_output
from diffcoremix.manifest.records import FLAGGED, read_manifest
from diffcoremix.scratch import scratch_root

logger = logging.getLogger(__name__)


@dataclass
class ClassReport:
    candidates: int = 0
    """Candidates scored (those with an image)."""
    accepted: int = 0
    scores: list[float] = field(default_factory=list)
    flagged: int = 0
    """Candidates the model's safety checker flagged: no image, so neither scored nor kept (not in ``candidates``)."""
    copies: int = 0
    """Scored candidates whose nearest real image is closer than the copy cut (:attr:`FilterReport.copy_cut`)."""

    @property
    def rejected(self) -> int:
        return self.candidates - self.accepted


@dataclass
class FilterReport:
    """Per-class counts and scores of one filtering (or calibration)."""

    threshold: float
    reference: str
    embedder: str
    classes: dict[str, ClassReport]
    suggested_threshold: float | None = None
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    embedder_note: str | None = None
    """Why this embedder, when it was chosen by default."""
    max_copy_similarity: float | None = None
    """The copy bound (None: no bound)."""
    copy_calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    """With calibration: per class, the cosines of real images to their nearest other image of the class."""

    @property
    def copy_cut(self) -> float:
        """Where copies are counted: the bound, or :data:`NEAR_COPY_SIMILARITY` (information only) without one."""
        bound = self.max_copy_similarity
        return NEAR_COPY_SIMILARITY if bound is None else bound

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "reference": self.reference,
            "embedder": self.embedder,
            "embedder_note": self.embedder_note,
            "max_copy_similarity": self.max_copy_similarity,
            "copy_cut": self.copy_cut,
            "suggested_threshold": self.suggested_threshold,
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "classes": {
                c: {
                    "candidates": r.candidates,
                    "accepted": r.accepted,
                    "rejected": r.rejected,
                    "acceptance_rate": r.accepted / r.candidates if r.candidates else None,
                    "flagged": r.flagged,
                    "copies": r.copies,
                    "copy_share": r.copies / r.candidates if r.candidates else None,
                    "scores": r.scores,
                }
                for c, r in self.classes.items()
            },
            "calibration": self.calibration,
            "copy_calibration": self.copy_calibration,
        }

    def to_text(self) -> str:
        width = max([len(text_cell(c)) for c in [*self.classes, *self.calibration]] + [5])
        bound = "off" if self.max_copy_similarity is None else repr(self.max_copy_similarity)
        lines = [f"embedder {self.embedder}   reference {self.reference}   threshold {self.threshold!r}   "
                 f"max copy similarity {bound}"]  # fmt: skip
        if self.embedder_note:
            lines.append(f"({self.embedder_note})")
        if self.classes:
            lines += self._class_lines(width)
        if self.calibration:
            lines += self._calibration_lines(width)
        if self.copy_calibration:
            lines += self._copy_calibration_lines(width)
        return "\n".join(lines)

    def _class_lines(self, width: int) -> list[str]:
        flagged = any(r.flagged for r in self.classes.values())  # its column only where the checker flagged any
        lines = [
            f"{'class':<{width}}  {'cands':>5}  {'kept':>5}  {'rejected':>8}  {'rate':>6}  {'median score':>12}  "
            f"{'copies':>12}" + ("  flagged" if flagged else "")
        ]
        for c, r in self.classes.items():
            rate = f"{r.accepted / r.candidates:6.1%}" if r.candidates else "     -"
            median = f"{np.median(r.scores):12.3f}" if r.scores else f"{'-':>12}"
            counts = f"{r.candidates:>5}  {r.accepted:>5}  {r.rejected:>8}"
            lines.append(f"{text_cell(c):<{width}}  {counts}  {rate}  {median}  {_copies(r.copies, r.candidates)}"
                         + (f"  {r.flagged:>7}" * flagged))  # fmt: skip
        total = sum(r.candidates for r in self.classes.values())
        kept = sum(r.accepted for r in self.classes.values())
        copies = _copies(sum(r.copies for r in self.classes.values()), total)
        all_flagged = f"  {sum(r.flagged for r in self.classes.values()):>7}" if flagged else ""
        lines.append(f"{'all':<{width}}  {total:>5}  {kept:>5}  {total - kept:>8}  {kept / max(total, 1):6.1%}  "
                     f"{'':>12}  {copies}" + all_flagged)  # fmt: skip
        if self.max_copy_similarity is None:
            lines.append(f"copies: nearest real image of the class at cosine > {NEAR_COPY_SIMILARITY} (information "
                         "only: no --max-copy-similarity bound, none rejected for it)")  # fmt: skip
        else:
            lines.append(f"copies: nearest real image of the class at cosine > {self.max_copy_similarity!r} "
                         "(--max-copy-similarity): rejected as copies")  # fmt: skip
        if flagged:
            lines.append("flagged: no image (the model's safety checker flagged it); not scored, never kept")
        return lines

    def _calibration_lines(self, width: int) -> list[str]:
        lines = [f"real images scored as candidates under the {self.reference!r} rule, within each class:"]
        lines.append(f"{'class':<{width}}  {'n':>5}  {'min':>6}  {'p10':>6}  {'median':>6}  {'max':>6}")
        for c, s in self.calibration.items():
            values = "  ".join(f"{s[k]:6.3f}" for k in ("min", "p10", "median", "max"))
            lines.append(f"{text_cell(c):<{width}}  {s.get('count', s.get('pairs', 0)):>5.0f}  {values}")
        lines.append(
            f"suggested threshold for --reference {self.reference}: {self.suggested_threshold:.3f} (the pooled 10th "
            "percentile: a kept image is as close to its reference as 90% of the real images are)"
        )
        return lines

    def _copy_calibration_lines(self, width: int) -> list[str]:
        lines = [
            "real images' cosine with their nearest other real image of the class (a --max-copy-similarity "
            "below these rejects what is no closer to a real image than real images are to each other):"
        ]
        lines.append(f"{'class':<{width}}  {'n':>5}  {'median':>6}  {'p90':>6}  {'p99':>6}  {'max':>6}")
        for c, s in self.copy_calibration.items():
            values = "  ".join(f"{s[k]:6.3f}" for k in ("median", "p90", "p99", "max"))
            lines.append(f"{text_cell(c):<{width}}  {s['count']:>5.0f}  {values}")
        return lines


def _copies(count: int, candidates: int) -> str:
    """``"3 (25.0%)"``, right-aligned in 12 characters."""
    share = f"{count / candidates:.1%}" if candidates else "-"
    return f"{f'{count} ({share})':>12}"


@dataclass
class Scored:
    """The outcome of scoring: the report and one decision row per candidate (nothing written yet)."""

    report: FilterReport
    rows: list[dict[str, Any]]
    classes: tuple[str, ...]
    """Every class of DATA (each gets its folders in the views)."""
    embedded: frozenset[str] = frozenset()
    """The digests of every image whose embedding the scoring used (what OUT's cache keeps)."""


def filter_run(
    out: str | Path,
    config: FilterConfig | None = None,
    *,
    data: str | Path | None = None,
    data_config: DataConfig | None = None,
    embedder: Embedder | None = None,
    embed: EmbedFiles = embed_files,
    progress: bool = False,
) -> FilterReport:
    """Filter (or, with ``config.calibrate``, only calibrate) the candidates of a generation run.

    Args:
        out: a ``generate`` output folder.
        config: filter options.
        data: the real dataset; by default the one recorded in ``OUT/run.json``.
        data_config: which classes (and images per class) of the dataset to filter; by default the run's own.
        embedder: an embedder instance to use instead of loading ``config.embedder``.
        embed: computes the embeddings (:func:`embed_files`; the Ray executor passes its own).
        progress: show progress bars.

    Returns:
        The report (also written to ``OUT/filter_report.json``, or ``OUT/calibration.json``).
    """
    config = config or FilterConfig()
    with open_output(out, must_exist=True) as folder:
        data = Path(data) if data is not None else folder.data_folder()
        check_separate(data, folder.path)
        if config.cache_dir is not None:
            check_separate(data, config.cache_dir)  # the cache is written too
        scored = score(folder, data, config, data_config=data_config, embedder=embedder, embed=embed,
                       progress=progress, check_real=True)  # fmt: skip
        write_outputs(folder, data, config, scored)
    return scored.report


def _recorded_data_config(settings: dict[str, Any]) -> DataConfig:
    """The subset of DATA that the run was generated from (all of it when none was recorded)."""
    return DataConfig(**settings["data"]) if isinstance(settings.get("data"), dict) else DataConfig()


def _settings(folder: OutputFolder) -> dict[str, Any]:
    try:
        value = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _skipped_sources(folder: OutputFolder) -> set[str]:
    """The images of DATA that generation found unusable (its run record names them): never embedded."""
    record = folder.run_record() or {}
    return {s["relpath"] for s in record.get("skipped_sources", []) if isinstance(s, dict) and "relpath" in s}


def embedder_spec(out: str | Path, config: FilterConfig) -> str:
    """The spec of the embedder that filtering OUT with ``config`` loads (the default follows OUT's generator)."""
    model = _settings(OutputFolder(Path(out))).get("settings", {}).get("model")
    return resolve_embedder_spec(config, model)[0]


def resolve_embedder_spec(config: FilterConfig, generator_model: str | None) -> tuple[str, str | None]:
    """The embedder spec to load, and a note when it is the default that follows the generator."""
    if config.embedder is not None:
        return config.embedder, None
    spec = default_embedder(generator_model)
    if spec == "tiny":
        return spec, f"--embedder tiny: the default for images of the built-in generator {generator_model}"
    return spec, None


def score(
    folder: OutputFolder,
    data: Path,
    config: FilterConfig,
    *,
    keys: Container[str] | None = None,
    data_config: DataConfig | None = None,
    embedder: Embedder | None = None,
    embed: EmbedFiles = embed_files,
    progress: bool = False,
    check_real: bool = False,
) -> Scored:
    """Embed and score the candidates of an opened output folder (only ``keys``, when given); write nothing but
    embedding-cache entries. ``embed`` computes the embeddings (:func:`embed_files`, or the Ray executor's).

    DATA is listed once, less the sources that generation skipped (``OUT/run.json`` names them). With
    ``check_real``, the real images that the filter compares with are decoded before the embedder loads, and those
    that cannot be used are named in one warning line and never embedded (:func:`check_compared`); without it they
    are taken as usable (``augment`` decoded every image of DATA before generating)."""
    candidates, flagged = _candidates(folder, keys)
    settings = _settings(folder)  # what generation recorded: its model and its subset of DATA
    listing = (data_config or _recorded_data_config(settings)).select(data).without(_skipped_sources(folder))
    if check_real:
        listing = check_compared(listing, candidates, config, progress=progress)
    model = settings.get("settings", {}).get("model")
    spec, note = resolve_embedder_spec(config, model)
    embedder = embedder or load_embedder(spec, resolve_device(config.device))
    cache_root = Path(config.cache_dir) if config.cache_dir else folder / CACHE_DIR
    cache = EmbeddingCache(cache_root, embedder.id)
    kwargs: dict[str, Any] = {"batch_size": config.batch_size, "workers": config.loader_workers, "progress": progress}
    # a cache of its own (shared between runs, say) keeps its temporary files in a scratch folder of its own
    with scratch_root(cache_root) if config.cache_dir else contextlib.nullcontext():
        candidates = _with_real_images(candidates, listing)
        index = _real_index(embedder, listing, candidates, config, cache, kwargs, embed)
        report = FilterReport(config.threshold, config.reference, embedder.id, {}, embedder_note=note,
                              max_copy_similarity=config.max_copy_similarity)  # fmt: skip
        rows: list[dict[str, Any]] = []
        if config.calibrate:
            report.suggested_threshold, report.calibration = suggest_threshold(index, config.reference)
            report.copy_calibration = nearest_real_scores(index)
        else:
            rows = _decide(embedder, folder, candidates, index, config, cache, kwargs, embed)
            scored = {row["class_folder"] for row in rows}
            for name, count in flagged.items():  # the classes in plan order: scored, flagged or both
                if count or name in scored:
                    report.classes[name] = ClassReport(flagged=count)
            for row in rows:
                cls = report.classes.setdefault(row["class_folder"], ClassReport())
                cls.candidates += 1
                cls.accepted += int(row["accepted"])
                cls.scores.append(round(row["score"], 6))
                cls.copies += int(row["nearest_real_score"] > report.copy_cut)
        report.cache_hits, report.cache_misses = cache.hits, cache.misses
        return Scored(report, rows, listing.classes, frozenset(cache.used))


def _candidates(folder: OutputFolder, keys: Container[str] | None) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The successfully generated candidates (restricted to ``keys`` when given), in plan order, and the number of
    flagged ones per class (the classes of both, in plan order; a class with none flagged counts 0)."""
    table = read_manifest(folder.path)
    if table.empty:
        raise DatasetError(f"{folder.path} has no generation manifest records to filter")
    table = table[table.status.isin(("ok", FLAGGED))]
    if keys is not None:
        table = table[table.key.map(lambda key: key in keys).astype(bool)]
    flagged = Counter({cls: 0 for cls in dict.fromkeys(table.class_folder)})
    flagged.update(table.class_folder[table.status == FLAGGED])
    rows: list[dict[str, Any]] = table[table.status == "ok"].to_dict(orient="records")
    return rows, flagged


def check_compared(
    listing: DatasetListing, candidates: Sequence[dict[str, Any]], config: FilterConfig, *, progress: bool = False
) -> DatasetListing:
    """Decode the real images that the filter compares with, and leave out those that cannot be used.

    What is decoded: the whole classes of the candidates (every rule: each candidate's nearest real image is sought
    among all of its class; with ``first``, the first usable image in listing order is the class's first) and the
    candidates' own sources (whatever their class); with ``calibrate``, every class. The unusable images found are
    named in one warning line (with the listing's own problems); an image of a class without candidates is never
    decoded.

    Returns:
        The listing less the images found unusable.

    Raises:
        DatasetError: no image of the listing is usable.
        ImageReadError: with ``source``, the source of a candidate to filter cannot be used (it is the candidate's
            reference).
    """
    check = ImageCheck(listing, scan=ScanConfig(min_side=1), progress=progress)
    by_class = listing.by_class()
    classes = list(by_class) if config.calibrate else sorted({r["class_folder"] for r in candidates} & by_class.keys())
    sources = {r["source"] for r in candidates}
    check.check(item for c in classes for item in by_class[c])
    check.check(item for item in listing.items if item.relpath in sources)
    result = check.result()
    filtered = {c for c, items in result.listing.by_class().items() if items}  # see _with_real_images
    rule_sources = sources if config.reference == "source" else set()
    compared = {r["source"] for r in candidates if r["class_folder"] in filtered} & rule_sources
    for finding in result.skipped:
        if finding.relpath in compared:  # the reference of its candidates: the embedding would fail on it
            raise ImageReadError(listing.root / finding.relpath, finding.kind, finding.reason)
    return result.listing


def _with_real_images(candidates: list[dict[str, Any]], listing: DatasetListing) -> list[dict[str, Any]]:
    """The candidates of classes in use that have real images to compare with (the others are not decided)."""
    usable = {c for c, items in listing.by_class().items() if items}
    left = sorted({r["class_folder"] for r in candidates} - usable)
    if left:
        logger.warning("not filtered: %d class(es) outside the selection or without a usable real image (%s)",
                       len(left), ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""))  # fmt: skip
    return [r for r in candidates if r["class_folder"] in usable]


def _real_index(
    embedder: Embedder,
    listing: DatasetListing,
    candidates: Sequence[dict[str, Any]],
    config: FilterConfig,
    cache: EmbeddingCache,
    kwargs: dict[str, Any],
    embed: EmbedFiles,
) -> RealIndex:
    """Embed the real images of the candidates' classes (every class, to calibrate) and the candidates' sources.

    Whole classes, whatever the rule: the ``source`` and ``first`` rules compare with one image, but the search for
    each candidate's nearest real image (the copy measure, recorded for every candidate) must see all of its class.
    The sources count too (a cross-class counterpart's source lies outside its class): a copy of its own source is
    a copy. With ``source`` every candidate's source is its reference; otherwise a source that is no longer in the
    listing (found unusable) is left out.
    """
    by_class = listing.by_class()
    classes = sorted({r["class_folder"] for r in candidates}) if not config.calibrate else list(by_class)
    members = {c: [i.relpath for i in by_class.get(c, [])] for c in classes}
    sources = {r["source"] for r in candidates}
    if config.reference != "source":
        sources &= {item.relpath for item in listing.items}
    needed = sorted({p for paths in members.values() for p in paths} | sources)
    vectors = embed(embedder, [listing.root / p for p in needed], cache, desc="embed real", **kwargs)
    return RealIndex(dict(zip(needed, vectors, strict=True)), members)


def _decide(
    embedder: Embedder,
    folder: OutputFolder,
    candidates: Sequence[dict[str, Any]],
    index: RealIndex,
    config: FilterConfig,
    cache: EmbeddingCache,
    kwargs: dict[str, Any],
    embed: EmbedFiles,
) -> list[dict[str, Any]]:
    """One decision row per candidate: its reference, score, text score, nearest real image and whether it is
    kept (and if not, which check rejected it)."""
    paths = [folder / r["output"] for r in candidates]
    vectors = embed(embedder, paths, cache, desc="embed generated", **kwargs)
    sources, classes = [r["source"] for r in candidates], [r["class_folder"] for r in candidates]
    refs = score_candidates(config.reference, index, vectors, sources, classes)
    text_scores = _text_scores(embedder, candidates, vectors) if config.text_check is not None else None
    bound = config.max_copy_similarity
    rows = []
    for i, (row, ref) in enumerate(zip(candidates, refs, strict=True)):
        text_score = None if text_scores is None else text_scores[i]
        text_ok = text_score is None or config.text_check is None or text_score >= config.text_check
        nearest = nearest_real(index, vectors[i], sources[i], classes[i])
        near_copy = None if bound is None else nearest.score > bound
        failed = [name for name, ok in (("threshold", ref.score >= config.threshold), ("text", text_ok),
                                        ("copy", not near_copy)) if not ok]  # fmt: skip
        rows.append(
            {
                "key": row["key"],
                "class_folder": row["class_folder"],
                "output": row["output"],
                "embedder": embedder.id,
                "reference_rule": config.reference,
                "reference": ref.reference,
                "score": ref.score,
                "threshold": config.threshold,
                "text_score": text_score,
                "text_threshold": config.text_check,
                "nearest_real": nearest.reference,
                "nearest_real_score": nearest.score,
                "max_copy_similarity": bound,
                "near_copy": near_copy,
                "accepted": not failed,
                "rejected_by": failed[0] if failed else None,
                # for the views (their content) and their metadata, not the decisions file
                "output_sha256": row["output_sha256"],
                "label": row["label"],
                "source": row["source"],
                "prompt": row["prompt"],
            }
        )
    return rows


def _text_scores(embedder: Embedder, candidates: Sequence[dict[str, Any]], vectors: np.ndarray) -> list[float]:
    names = sorted({r["class_name"] for r in candidates})
    if not names:
        return []
    texts = embedder.embed_texts([f"a photo of a {n}" for n in names]).numpy()
    text_of = dict(zip(names, texts, strict=True))
    return [float(v @ text_of[r["class_name"]]) for v, r in zip(vectors, candidates, strict=True)]


_DECISION_FIELDS = ("key", "class_folder", "output", "embedder", "reference_rule", "reference", "score", "threshold",
                    "text_score", "text_threshold", "nearest_real", "nearest_real_score", "max_copy_similarity",
                    "near_copy", "accepted", "rejected_by")  # fmt: skip


def write_outputs(folder: OutputFolder, data: Path, config: FilterConfig, scored: Scored) -> None:
    """Write what a filtering (or calibration) found: decisions, views, report, histograms, resolved config."""
    report = scored.report
    if config.calibrate:
        write_text_if_changed(folder / CALIBRATION_FILE, _report_json(report))
        return
    write_decisions(folder.path, ({f: r[f] for f in _DECISION_FIELDS} for r in scored.rows))
    plots = render_histograms({c: r.scores for c, r in report.classes.items()}, config.threshold)
    extra = {f"{REPORT_DIR}/{name}": data for name, data in plots.items()}
    counts = relayout(folder.path, scored.rows, scored.classes, extra=extra)
    logger.info("views re-derived: %s", counts)
    if config.cache_dir is None:  # OUT's own cache holds what these decisions used, no more (a shared one is left)
        pruned = prune(folder / CACHE_DIR, scored.report.embedder, scored.embedded)
        logger.info("cache: %d entr%s no record names any more deleted", pruned, "y" if pruned == 1 else "ies")
    write_resolved_config(folder / FILTER_CONFIG_FILE, {"filter": config}, data=data)
    write_text_if_changed(folder / FILTER_REPORT_FILE, _report_json(report))


def _report_json(report: FilterReport) -> str:
    # Cache hits say how this call went, not what it found: left out, so that an equal result is an equal file.
    document = report.to_dict()
    document.pop("cache")
    return json.dumps(document, indent=2) + "\n"
