"""``diffcoremix filter``: the hard cosine filtration of a generation run (METHOD.md §6).

Every generated candidate of OUT is embedded and compared with its reference (a rule of
:mod:`diffcoremix.filter.references`); it is accepted iff ``score >= threshold`` (and, with a text check, iff its
similarity to "a photo of a {class}" is ``>= text_check`` too). Decisions go to ``OUT/filter.jsonl`` (joined into
:func:`read_manifest`), the accepted images are laid out as ``OUT/train/<class>/...`` and the rejected ones as
``OUT/rejected/<class>/...`` (hard links to ``OUT/images``: nothing is copied or deleted, and re-filtering with
another threshold re-derives both folders). Real-image embeddings are cached on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcoremix.atomic import atomic_write_text
from diffcoremix.config import write_resolved_config
from diffcoremix.data.folder import list_images
from diffcoremix.devices import resolve_device
from diffcoremix.embedders.cache import EmbeddingCache, embed_files
from diffcoremix.embedders.models import Embedder, load_embedder
from diffcoremix.errors import DatasetError
from diffcoremix.filter.config import FilterConfig
from diffcoremix.filter.references import RealIndex, score_candidates, suggest_threshold
from diffcoremix.manifest.records import FILTER_FILE as DECISIONS_FILE
from diffcoremix.manifest.records import read_manifest

logger = logging.getLogger(__name__)


RUN_FILE = "run.json"


@dataclass
class ClassReport:
    candidates: int = 0
    accepted: int = 0
    scores: list[float] = field(default_factory=list)

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "reference": self.reference,
            "embedder": self.embedder,
            "suggested_threshold": self.suggested_threshold,
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "classes": {
                c: {
                    "candidates": r.candidates,
                    "accepted": r.accepted,
                    "rejected": r.rejected,
                    "acceptance_rate": r.accepted / r.candidates if r.candidates else None,
                    "scores": r.scores,
                }
                for c, r in self.classes.items()
            },
            "calibration": self.calibration,
        }

    def to_text(self) -> str:
        width = max([len(c) for c in self.classes] + [len(c) for c in self.calibration] + [5])
        lines = [f"embedder {self.embedder}   reference {self.reference}   threshold {self.threshold!r}"]
        if self.classes:
            lines.append(
                f"{'class':<{width}}  {'cands':>5}  {'kept':>5}  {'rejected':>8}  {'rate':>6}  {'median score':>12}"
            )
            for c, r in self.classes.items():
                rate = f"{r.accepted / r.candidates:6.1%}" if r.candidates else "     -"
                median = f"{np.median(r.scores):12.3f}" if r.scores else f"{'-':>12}"
                lines.append(f"{c:<{width}}  {r.candidates:>5}  {r.accepted:>5}  {r.rejected:>8}  {rate}  {median}")
            total = sum(r.candidates for r in self.classes.values())
            kept = sum(r.accepted for r in self.classes.values())
            lines.append(f"{'all':<{width}}  {total:>5}  {kept:>5}  {total - kept:>8}  {kept / max(total, 1):6.1%}")
        if self.calibration:
            lines.append("real-to-real cosine similarity within each class:")
            lines.append(f"{'class':<{width}}  {'pairs':>5}  {'min':>6}  {'p10':>6}  {'median':>6}  {'max':>6}")
            for c, s in self.calibration.items():
                values = "  ".join(f"{s[k]:6.3f}" for k in ("min", "p10", "median", "max"))
                lines.append(f"{c:<{width}}  {s['pairs']:>5.0f}  {values}")
            lines.append(
                f"suggested threshold: {self.suggested_threshold:.3f} (the pooled 10th percentile of same-class "
                "real-to-real similarity: a kept image is as close to its reference as 90% of real same-class pairs)"
            )
        return "\n".join(lines)


def _data_folder(out: Path, data: str | Path | None) -> Path:
    if data is not None:
        return Path(data)
    run = out / RUN_FILE
    if not run.is_file():
        raise DatasetError(f"{out} has no {RUN_FILE} (is it a generate output?); pass the dataset with --data")
    return Path(json.loads(run.read_text(encoding="utf-8"))["data"])


def _layout_name(output: str) -> str:
    # images/<class>/<sub/dirs/file>.k0.png -> <sub__dirs__file>.k0.png (flat class folders for ImageFolder)
    return "__".join(Path(output).parts[2:])


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copy2(source, target)


def _relayout(out: Path, rows: list[dict[str, Any]]) -> None:
    """Re-derive OUT/train and OUT/rejected from the decisions (links only; OUT/images is never touched)."""
    staging = out / ".layout.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for name in ("train", "rejected"):
        (staging / name).mkdir(parents=True)
    for row in rows:
        where = "train" if row["accepted"] else "rejected"
        _link(out / row["output"], staging / where / row["class_folder"] / _layout_name(row["output"]))
    for name in ("train", "rejected"):
        old = out / f".{name}.old.tmp"
        shutil.rmtree(old, ignore_errors=True)
        if (out / name).exists():
            os.replace(out / name, old)
        os.replace(staging / name, out / name)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def filter_run(
    out: str | Path,
    config: FilterConfig | None = None,
    *,
    data: str | Path | None = None,
    embedder: Embedder | None = None,
    progress: bool = False,
) -> FilterReport:
    """Filter (or, with ``config.calibrate``, only calibrate) the candidates of a generation run.

    Args:
        out: a ``generate`` output folder.
        config: filter options.
        data: the real dataset; by default the one recorded by ``generate`` in ``OUT/run.json``.
        embedder: an embedder instance to use instead of loading ``config.embedder``.
        progress: show progress bars.

    Returns:
        The report (also written to ``OUT/filter_report.json``).
    """
    out = Path(out)
    config = config or FilterConfig()
    data = _data_folder(out, data)
    table = read_manifest(out)
    if table.empty:
        raise DatasetError(f"{out} has no generation manifest records to filter")
    ok = table[table.status == "ok"]
    embedder = embedder or load_embedder(config.embedder, resolve_device(config.device))
    cache = EmbeddingCache(Path(config.cache_dir) if config.cache_dir else out / "cache", embedder.id)
    kwargs: dict[str, Any] = {"batch_size": config.batch_size, "workers": config.workers, "progress": progress}

    listing = list_images(data)
    classes = sorted(set(ok.class_folder))
    by_class = listing.by_class()
    members = {c: [i.relpath for i in by_class.get(c, [])] for c in classes}
    # Embed only the real images the rule compares with: sources, the classes' first images, or whole classes.
    if config.reference == "first" and not config.calibrate:
        members = {c: paths[:1] for c, paths in members.items()}
    elif config.reference == "source" and not config.calibrate:
        members = {}
    sources = set(ok.source) if config.reference == "source" else set()
    needed = sorted({p for paths in members.values() for p in paths} | sources)
    real = embed_files(embedder, [data / p for p in needed], cache, desc="embed real", **kwargs)
    index = RealIndex(dict(zip(needed, real, strict=True)), members)
    report = FilterReport(config.threshold, config.reference, embedder.id, {})

    if config.calibrate:
        report.suggested_threshold, report.calibration = suggest_threshold(index)
    else:
        vectors = embed_files(embedder, [out / p for p in ok.output], cache, desc="embed generated", **kwargs)
        refs = score_candidates(config.reference, index, vectors, list(ok.source), list(ok.class_folder))
        text_scores: list[float | None] = [None] * len(ok)
        if config.text_check is not None:
            names = sorted(set(ok.class_name))
            texts = embedder.embed_texts([f"a photo of a {n}" for n in names]).numpy()
            text_of = dict(zip(names, texts, strict=True))
            text_scores = [float(v @ text_of[n]) for v, n in zip(vectors, ok.class_name, strict=True)]
        rows = []
        for row, ref, text_score in zip(ok.to_dict(orient="records"), refs, text_scores, strict=True):
            text_ok = text_score is None or config.text_check is None or text_score >= config.text_check
            accepted = ref.score >= config.threshold and text_ok
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
                    "accepted": bool(accepted),
                }
            )
            cls = report.classes.setdefault(row["class_folder"], ClassReport())
            cls.candidates += 1
            cls.accepted += int(accepted)
            cls.scores.append(round(ref.score, 6))
        atomic_write_text(out / DECISIONS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        _relayout(out, rows)
        write_resolved_config(out / "filter.config.yaml", {"filter": config}, data=data)
        write_histograms(out / "filter_report", report)
    report.cache_hits, report.cache_misses = cache.hits, cache.misses
    name = "calibration.json" if config.calibrate else "filter_report.json"
    atomic_write_text(out / name, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def write_histograms(folder: Path, report: FilterReport, bins: int = 20) -> None:
    """One PNG per class: a histogram of its scores over [-1, 1] with the threshold marked in red."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    width, height, pad = 400, 200, 20
    for cls, r in report.classes.items():
        counts, edges = np.histogram(r.scores, bins=bins, range=(-1.0, 1.0))
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        top = max(int(counts.max()), 1)
        bar = (width - 2 * pad) / bins
        for i, n in enumerate(counts):
            x0 = pad + i * bar
            y0 = height - pad - (height - 2 * pad) * n / top
            fill = "seagreen" if edges[i] >= report.threshold else "gray"
            draw.rectangle([x0, y0, x0 + bar - 1, height - pad], fill=fill)
        tx = pad + (report.threshold + 1) / 2 * (width - 2 * pad)
        draw.line([tx, pad, tx, height - pad], fill="red", width=2)
        draw.text((pad, 2), f"{cls}: {r.accepted}/{r.candidates} kept, threshold {report.threshold:g}", fill="black")
        image.save(folder / f"{cls}.png")
