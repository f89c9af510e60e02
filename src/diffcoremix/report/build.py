"""``diffcoremix report``: one self-contained HTML page about a generation run and, optionally, its training.

The page holds everything inline (images as ``data:`` URIs, CSS in a ``<style>`` element, no script), and its
Content-Security-Policy forbids every request, so it opens offline, from an e-mail or a phone, and shows the same
everywhere. Its sections:

- ``overview``: candidates, kept, rejected, failed, flagged by the model's safety checker; the judge's agreement
  overall and among the kept and the rejected; what the page samples;
- ``provenance``: model, revision or weights hash, fine-tune run, embedder, rule, threshold, library versions;
- ``budget``: per class, the planned candidates against the generated, scored and kept ones (and the judge);
- ``scores``: score histograms with the threshold and the calibrated suggestion;
- ``grids``: the borderline cases on both sides of the threshold, then seeded samples of kept and rejected
  candidates beside their source images, with prompt, context, seed, score and the judge's verdict;
- ``distances``: KID (and FID where a class has enough images) between real and kept images per class;
- ``mixing``: a labelled preview of the pixel and patch mixes;
- ``training`` (with runs, ``compare`` or ``eval``): the method table, overhead against accuracy, training curves,
  confusion matrices and the Grad-CAM grid.

A million candidates cost a read of the manifest and a few numpy passes: the grids, histograms and distances are
drawn from bounded, seeded samples (the page says how many of how many), so the file stays under
:data:`REPORT_MAX_BYTES`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffcoremix import __version__
from diffcoremix.atomic import atomic_write_text
from diffcoremix.data.images import open_image
from diffcoremix.embedders.cache import EmbeddingCache
from diffcoremix.errors import ConfigError, DiffCoReMixError
from diffcoremix.filter.config import NEAR_COPY_SIMILARITY
from diffcoremix.manifest.layout import CACHE_DIR, OutputFolderError, inside
from diffcoremix.manifest.records import FLAGGED
from diffcoremix.report.collect import (
    CompareFolder,
    EvalFolder,
    GenerationRun,
    TrainingRun,
    read_compare,
    read_eval,
    read_generation_run,
    read_training_run,
)
from diffcoremix.report.distances import Distance, distance, pooled
from diffcoremix.report.figures import histogram_png, png_bytes, training_curves_png
from diffcoremix.report.sample import borderline, stratified_sample
from diffcoremix.report.thumbs import figure_uri, file_thumbnail, png_uri

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

REPORT_MAX_BYTES = 8 * 1024 * 1024
"""The page stays under 8 MiB whatever the run's size: every image on it comes from a bounded sample."""
GENERATOR_MARK = "diffcoremix report"
"""The page's ``<meta name="generator">``: an existing file without it is not ours, and is never replaced."""
GRID_CARDS = 48
"""Cards per grid (kept, rejected), spread over the classes."""
BORDERLINE_PER_SIDE = 8
HISTOGRAM_CLASSES = 24
"""Per-class histograms and distances shown at most (the classes with the lowest keep rates beyond this)."""
TABLE_CLASSES = 2000
"""Rows of the per-class table at most."""
DISTANCE_SAMPLES = 200
"""Images per side and class whose features enter KID (seeded sample); FID samples up to ``FID_SAMPLES``."""
FID_SAMPLES = 2048
MAX_RUNS = 12
"""Training runs drawn in the curves and confusion matrices at most."""
MIX_CLASSES = 6


class ReportError(DiffCoReMixError):
    """The report cannot be written as asked."""


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote."""

    path: Path
    size: int
    """Bytes."""
    seconds: float
    sections: tuple[str, ...]
    """The ids of the page's sections, in order."""
    notes: tuple[str, ...] = ()
    """What the page could not show, and why."""


@dataclass
class _Page:
    """What the template renders; sections fill it in turn."""

    title: str
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.notes.append(text)
        logger.warning("report: %s", text)


def build_report(
    out: str | Path,
    output: str | Path | None = None,
    *,
    runs: Sequence[str | Path] = (),
    compare: str | Path | None = None,
    evaluation: str | Path | None = None,
    data: str | Path | None = None,
    seed: int = 0,
    grid: int = GRID_CARDS,
    progress: bool = False,
) -> ReportResult:
    """Write the HTML report of a generation output folder (and of training runs, when given).

    Args:
        out: the output folder of ``generate`` or ``augment`` (read only).
        output: the HTML file to write (default ``OUT/report.html``). An existing file is replaced only if it is a
            report of ours.
        runs: training RUN folders (their curves); a compare folder adds its own runs.
        compare: a ``compare`` output folder (the method table and the overhead plot).
        evaluation: an ``eval`` output folder (figures, confusion matrices, the Grad-CAM grid).
        data: DATA, when it moved since generation (default: the path OUT's run record names).
        seed: seeds the samples of the grids and distances.
        grid: cards per grid (kept, rejected).
        progress: log each section as it is drawn.

    Raises:
        DatasetError: OUT is not a generation output folder, or a given folder is not what it should be.
        OutputFolderError: ``output`` is a file we did not make, or lies inside DATA.
        ConfigError: ``grid`` is below 1.
    """
    started = time.perf_counter()
    if grid < 1:
        raise ConfigError("grid", grid, ">= 1")
    run = read_generation_run(out)
    if data is not None:
        run.data = Path(data)
    target = Path(output) if output is not None else run.out / "report.html"
    _check_target(target, run.data)
    compare_folder = read_compare(compare) if compare is not None else None
    eval_folder = read_eval(evaluation) if evaluation is not None else None
    training = [read_training_run(p) for p in runs]
    if compare_folder is not None:
        named = {r.path.resolve() for r in training}
        training += [read_training_run(p) for p in compare_folder.runs if p.resolve() not in named]

    page = _Page(title=f"diffcoremix report: {run.out.name}")
    steps: list[tuple[str, Callable[[], None]]] = [
        ("overview", lambda: _overview(page, run, grid)),
        ("provenance", lambda: _provenance(page, run)),
        ("counterparts", lambda: _counterparts(page, run)),
        ("budget", lambda: _budget(page, run)),
        ("scores", lambda: _scores(page, run)),
        ("grids", lambda: _grids(page, run, grid, seed)),
        ("distances", lambda: _distances(page, run, seed)),
        ("mixing", lambda: _mixing(page, run, seed)),
    ]
    if training or compare_folder is not None or eval_folder is not None:
        steps.append(("training", lambda: _training(page, compare_folder, eval_folder, training)))
    for name, draw in steps:
        t0 = time.perf_counter()
        draw()
        page.sections.append(name)
        (logger.info if progress else logger.debug)("report: %s drawn in %.1f s", name, time.perf_counter() - t0)
    text = _render(page, run)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    size = len(text.encode("utf-8"))
    if size > REPORT_MAX_BYTES:  # cannot happen by construction; said loudly if it ever does
        logger.warning("report: %s is %.1f MiB, over the %.0f MiB it should stay under", target, size / 2**20,
                       REPORT_MAX_BYTES / 2**20)  # fmt: skip
    return ReportResult(target, size, time.perf_counter() - started, tuple(page.sections), tuple(page.notes))


def _check_target(target: Path, data: Path | None) -> None:
    """Refuse to replace a file we did not make, or to write into DATA."""
    if target.is_dir():
        raise OutputFolderError(f"{target} is a folder: give the report's file name (-o report.html)")
    if data is not None and data.exists() and inside(target.resolve(), data.resolve()):
        raise OutputFolderError(f"{target} is inside the dataset {data}: diffcoremix never writes into DATA")
    if target.exists():
        try:
            with target.open("r", encoding="utf-8", errors="replace") as handle:
                head = handle.read(4096)
        except OSError as err:
            raise OutputFolderError(f"cannot read the existing {target}: {err}") from err
        if f'<meta name="generator" content="{GENERATOR_MARK}' not in head:
            raise OutputFolderError(
                f"{target} exists and is not a diffcoremix report: it is left as it is; choose another -o path"
            )


def _decided(run: GenerationRun) -> pd.DataFrame:
    """The candidates the filter decided, with ``accepted`` as booleans and ``score`` as floats."""
    table = run.table
    if not run.filtered:
        return table.iloc[:0].assign(accepted=False, score=0.0)
    decided = table[table.accepted.notna() & table.score.notna()].copy()
    decided["accepted"] = decided.accepted.astype(bool)
    decided["score"] = decided.score.astype(float)
    return decided


def _overview(page: _Page, run: GenerationRun, grid: int) -> None:
    table = run.table
    ok = int((table.status == "ok").sum())
    flagged = int((table.status == FLAGGED).sum())
    decided = _decided(run)
    kept = int(decided.accepted.sum())
    page.context["overview"] = {
        "out": str(run.out),
        "data": str(run.data) if run.data else "not recorded",
        "candidates": len(table),
        "classes": int(table.class_folder.nunique()),
        "ok": ok,
        "failed": len(table) - ok - flagged,
        "flagged": flagged,
        "decided": len(decided),
        "kept": kept,
        "rejected": len(decided) - kept,
        "kept_share": f"{kept / len(decided):.1%}" if len(decided) else "-",
        "filtered": run.filtered,
        "judged": run.judged,
        "grid": grid,
        "judge_agrees": _judge_agreement(table),
        "judge_by_decision": _judge_by_decision(run),
        "max_mib": REPORT_MAX_BYTES // 2**20,
        "built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if not run.filtered:
        page.note(f"{run.out} has not been filtered yet (no filter.jsonl): scores, grids and distances are empty; "
                  f"run `diffcoremix filter {run.out}`")  # fmt: skip


def _judge_agreement(table: pd.DataFrame) -> tuple[str, int] | None:
    """The share of judged candidates whose class the judge agrees with and their count; None when none was."""
    if "agrees" not in table.columns:
        return None
    judged = table.agrees.dropna()
    return (f"{judged.astype(bool).mean():.0%}", len(judged)) if len(judged) else None


def _judge_by_decision(run: GenerationRun) -> list[tuple[str, str, int]]:
    """The judge's agreement among the kept and among the rejected candidates: ``(group, share, judged count)``.

    The filter's own score cannot say whether it keeps the right images; an independent network can: a filter that
    keeps what the generator drew of the class agrees with the judge more often among the kept than among the
    rejected. Empty unless OUT was both filtered and judged.
    """
    if not (run.filtered and run.judged):
        return []
    decided = _decided(run)
    judged = decided[decided.agrees.notna()]
    groups = (("kept", judged[judged.accepted]), ("rejected", judged[~judged.accepted]))
    return [(name, f"{g.agrees.astype(bool).mean():.0%}" if len(g) else "-", len(g)) for name, g in groups]


def _unique(table: pd.DataFrame, column: str) -> str:
    """The values of a column among successful records, with counts when there are several."""
    if column not in table.columns:
        return "-"
    values = table[column].dropna().astype(str)
    counts = values.value_counts()
    if counts.empty:
        return "-"
    if len(counts) == 1:
        return str(counts.index[0])
    return "; ".join(f"{v} ({n})" for v, n in counts.head(5).items()) + ("; ..." if len(counts) > 5 else "")


def _library_versions() -> dict[str, str]:
    names = ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "timm", "torchmetrics",
             "matplotlib", "jinja2")  # fmt: skip
    versions = {"diffcoremix": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _provenance(page: _Page, run: GenerationRun) -> None:
    ok = run.table[run.table.status == "ok"]
    settings = run.settings.get("settings", {}) if isinstance(run.settings.get("settings"), dict) else {}
    finetune = next((f for f in ok.get("finetune", []) if isinstance(f, dict)), None)
    generation = [
        ("model", _unique(ok, "model")),
        ("revision / weights digest", _unique(ok, "model_revision")),
        ("model weights SHA-256", _unique(ok, "model_sha256")),
        ("pipeline", _unique(ok, "pipeline")),
        ("scheduler", _unique(ok, "scheduler")),
        ("LoRA", _unique(ok, "lora")),
        ("steps, guidance", f"{_unique(ok, 'num_inference_steps')}, {_unique(ok, 'guidance_scale')}"),
        ("size", f"{_unique(ok, 'width')} x {_unique(ok, 'height')}"),
        ("dtype, device", f"{_unique(ok, 'dtype')}, {_unique(ok, 'device')}"),
        ("preset", str(settings.get("preset", "-"))),
        ("safety checker", _safety_checker(run, settings)),
    ]
    if finetune:  # what `diffcoremix finetune` made the model from: base, data hash, steps, loss, digests
        generation += [(f"fine-tune: {k.replace('_', ' ')}", _plain(v)) for k, v in finetune.items()]
    report = run.filter_report
    filtering = [
        ("embedder", str(report.get("embedder", run.filter_options.get("embedder") or "-"))),
        ("reference rule", str(report.get("reference", run.filter_options.get("reference", "-")))),
        ("threshold", str(run.threshold) if run.threshold is not None else "-"),
        ("text check", str(run.filter_options.get("text_check") or "off")),
        ("max copy similarity", "off" if run.copy_bound is None else str(run.copy_bound)),
    ]
    if report.get("embedder_note"):
        filtering.append(("why this embedder", str(report["embedder_note"])))
    prompts = run.options.get("prompts", {})
    planning = [(k, _plain(v)) for k, v in prompts.items()]
    recorded = {k: v for k, v in run.facts.items() if k not in ("data", "diffcoremix_version")}
    page.context["provenance"] = {
        "generation": generation,
        "filtering": filtering,
        "prompts": planning,
        "run_versions": sorted(recorded.items()),
        "report_versions": sorted(_library_versions().items()),
    }


def _counterparts(page: _Page, run: GenerationRun) -> None:
    """What kind of counterparts OUT holds (its mode) and, per strength, how many were made, kept and recognised."""
    table = run.table
    modes = table["counterpart"].fillna("text") if "counterpart" in table.columns else None
    mode = "text" if modes is None or modes.empty else str(modes.iloc[0])
    decided = _decided(run)
    kept = set(decided[decided.accepted].key) if len(decided) else set()
    rows = []
    strengths = table["strength"] if "strength" in table.columns else None
    if strengths is not None and strengths.notna().any():
        for strength, group in table.groupby("strength"):
            made = group[group.status == "ok"]
            judged = made[made.agrees.notna()] if run.judged else made.iloc[0:0]
            row = {"strength": f"{strength:g}", "candidates": len(group), "generated": len(made),
                   "kept": int(made.key.isin(kept).sum()),
                   "judge": f"{judged.agrees.astype(bool).mean():.0%}" if len(judged) else "-"}  # fmt: skip
            if mode == "cross-class":
                weights = [s[t] for s, t in zip(group.soft_label, group.target_class_folder, strict=True)
                           if isinstance(s, dict) and t in s]  # fmt: skip
                row["target_weight"] = f"{np.mean(weights):.2f}" if weights else "-"
            rows.append(row)
    facts = [("mode", mode), ("pipeline", _unique(table[table.status == "ok"], "pipeline"))]
    if "mask_sha256" in table.columns and table.mask_sha256.notna().any():
        facts.append(("subject masks recorded", str(table.mask_sha256.nunique())))
        mask_failures = table.error.fillna("").str.startswith("MaskError").sum()
        facts.append(("candidates without a usable mask", str(int(mask_failures))))
    if "image_guidance_scale" in table.columns and table.image_guidance_scale.notna().any():
        facts.append(("image guidance scale", _unique(table, "image_guidance_scale")))
    page.context["counterparts"] = {"facts": facts, "rows": rows, "judged": run.judged,
                                    "cross": mode == "cross-class"}  # fmt: skip


def _safety_checker(run: GenerationRun, settings: dict[str, Any]) -> str:
    """``--safety-checker`` and the checker that judged the images (of every record: flagged ones have no image)."""
    setting = {"on": "on", "off": "off"}.get(str(settings.get("safety_checker")), "the model's own")
    checker = _unique(run.table, "safety_checker")
    return f"{setting}: {'none ran' if checker == '-' else checker}"


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def _budget(page: _Page, run: GenerationRun) -> None:
    import pandas as pd

    table = run.table
    attempt = table.attempt.fillna(0) if "attempt" in table.columns else pd.Series(0, index=table.index)
    decided = _decided(run)
    frame = pd.DataFrame(
        {
            "sources": table.groupby("class_folder").source.nunique(),
            "budget": table[attempt == 0].groupby("class_folder").size(),
            "generated": table[table.status == "ok"].groupby("class_folder").size(),
            "failed": table[~table.status.isin(("ok", FLAGGED))].groupby("class_folder").size(),
            "flagged": table[table.status == FLAGGED].groupby("class_folder").size(),
            "scored": decided.groupby("class_folder").size(),
            "kept": decided[decided.accepted].groupby("class_folder").size(),
            "median": decided.groupby("class_folder").score.median(),
        }
    ).fillna({"budget": 0, "generated": 0, "failed": 0, "flagged": 0, "scored": 0, "kept": 0})
    names = table.groupby("class_folder").class_name.first()
    if run.judged:
        judged = table[table.agrees.notna()]
        frame["judge"] = judged.groupby("class_folder").agrees.apply(lambda s: s.astype(bool).mean())
    copies = _copies(run, decided)
    rows: list[dict[str, Any]] = []
    for cls, row in frame.sort_index().iterrows():
        budget, kept = int(row.budget), int(row.kept)
        rows.append({
            "cls": str(cls), "name": str(names.get(cls, cls)), "sources": int(row.sources), "budget": budget,
            "generated": int(row.generated), "failed": int(row.failed), "flagged": int(row.flagged),
            "scored": int(row.scored), "kept": kept,
            "rate": f"{kept / row.scored:.0%}" if row.scored else "-",
            "met": kept >= budget if run.filtered else None,
            "median": f"{row['median']:.3f}" if not math.isnan(row["median"]) else "-",
            "judge": f"{row['judge']:.0%}" if run.judged and not math.isnan(row.get("judge", math.nan)) else "-",
            "copies": _share(copies.get(cls, 0), int(row.scored)) if copies is not None else "-",
        })  # fmt: skip
    totals = {k: sum(r[k] for r in rows) for k in ("sources", "budget", "generated", "failed", "flagged", "scored",
                                                   "kept")}  # fmt: skip
    page.context["budget"] = {"rows": rows[:TABLE_CLASSES], "classes": len(rows), "totals": totals,
                              "judged": run.judged, "shown": min(len(rows), TABLE_CLASSES),
                              "copies": _copies_context(run, copies, totals["scored"])}  # fmt: skip


def _copies(run: GenerationRun, decided: pd.DataFrame) -> dict[str, int] | None:
    """Per class, the scored candidates whose nearest real image is above the copy cut (the bound, or 0.95 for
    information without one); None when the filter did not record nearest real images."""
    if not run.copies_measured:
        return None
    cut = NEAR_COPY_SIMILARITY if run.copy_bound is None else run.copy_bound
    above = decided[decided.nearest_real_score.astype(float) > cut]
    return {str(c): int(n) for c, n in above.groupby("class_folder").size().items()}


def _copies_context(run: GenerationRun, copies: dict[str, int] | None, scored: int) -> dict[str, str] | None:
    if copies is None:
        return None
    bound = run.copy_bound
    note = (f"copies: scored candidates whose nearest real image of the class is at cosine > {bound} "
            "(--max-copy-similarity): rejected as copies" if bound is not None else
            f"copies: scored candidates whose nearest real image of the class is at cosine > {NEAR_COPY_SIMILARITY} "
            "(information only: no --max-copy-similarity bound, none rejected for it)")  # fmt: skip
    return {"total": _share(sum(copies.values()), scored), "note": note}


def _share(count: int, of: int) -> str:
    return f"{count} ({count / of:.0%})" if of else f"{count}"


def _suggestion(run: GenerationRun) -> tuple[float | None, str]:
    calibration = run.calibration
    value = calibration.get("suggested_threshold")
    if value is None:
        return None, f"no calibration yet: `diffcoremix filter {run.out} --calibrate` suggests a threshold"
    rule = calibration.get("reference")
    current = run.filter_report.get("reference")
    if rule != current:
        return None, f"the calibration on record is for the rule {rule!r}, not {current!r}: not drawn"
    return float(value), (
        f"dashed blue: the calibrated threshold {float(value):.3f} (the pooled 10th percentile of real images scored "
        "as candidates under the same rule)"
    )


def _shown_classes(decided: pd.DataFrame) -> tuple[list[str], str]:
    """The classes whose histograms and distances are drawn: all, or the lowest keep rates beyond the cap."""
    rates = decided.groupby("class_folder").accepted.mean()
    if len(rates) <= HISTOGRAM_CLASSES:
        return sorted(rates.index.astype(str)), f"all {len(rates)} classes"
    chosen = rates.reset_index().sort_values(["accepted", "class_folder"]).class_folder.head(HISTOGRAM_CLASSES)
    return list(chosen.astype(str)), (
        f"the {HISTOGRAM_CLASSES} classes with the lowest keep rates, of {len(rates)} (the table above lists all)"
    )


def _scores(page: _Page, run: GenerationRun) -> None:
    decided = _decided(run)
    threshold = run.threshold
    suggestion, suggestion_note = _suggestion(run)
    plots: list[dict[str, str]] = []
    which = "no scores yet"
    if len(decided) and threshold is not None:
        scores = decided.score.to_numpy()
        plots.append({"title": "all classes", "uri": png_uri(histogram_png("all classes", scores, threshold,
                                                                             suggestion))})  # fmt: skip
        classes, which = _shown_classes(decided)
        by_class = decided.groupby("class_folder").score
        names = decided.groupby("class_folder").class_name.first()
        for cls in classes:
            title = f"{names.get(cls, cls)} ({cls})" if names.get(cls, cls) != cls else cls
            plots.append({"title": title, "uri": png_uri(histogram_png(
                title, by_class.get_group(cls).to_numpy(), threshold, suggestion))})  # fmt: skip
    page.context["scores"] = {"plots": plots, "which": which, "suggestion": suggestion_note,
                              "threshold": threshold}  # fmt: skip


def _card(run: GenerationRun, row: Any, sources: dict[str, str | None]) -> dict[str, Any]:
    source = str(row.source)
    if source not in sources:
        sources[source] = file_thumbnail(run.data / source) if run.data is not None else None
    judge = None
    if run.judged and getattr(row, "judge_class", None) is not None:
        confidence = getattr(row, "judge_confidence", None)
        judge = {
            "cls": str(row.judge_class),
            "confidence": f"{float(confidence):.0%}" if confidence is not None else "",
            "agrees": bool(row.agrees) if row.agrees is not None else None,
        }
    return {
        "key": str(row.key),
        "cls": str(row.class_name),
        "folder": str(row.class_folder),
        "source": source,
        "source_uri": sources[source],
        "uri": file_thumbnail(run.out / str(row.output)) if row.output else None,
        "prompt": str(row.prompt),
        "context": str(row.context) if row.context is not None else "",
        "seed": int(row.seed) if row.seed is not None else "",
        "attempt": int(row.attempt) if getattr(row, "attempt", None) is not None else 0,
        "score": f"{float(row.score):.3f}",
        "accepted": bool(row.accepted),
        "judge": judge,
    }


def _grids(page: _Page, run: GenerationRun, grid: int, seed: int) -> None:
    decided = _decided(run)
    sources: dict[str, str | None] = {}
    kept, rejected = decided[decided.accepted], decided[~decided.accepted]

    def cards(rows: pd.DataFrame) -> list[dict[str, Any]]:
        return [_card(run, row, sources) for row in rows.itertuples(index=False)]

    kept_sample = stratified_sample(kept, grid, seed).sort_values(["score", "key"], kind="stable")
    rejected_sample = stratified_sample(rejected, grid, seed + 1).sort_values(
        ["score", "key"], ascending=[False, True], kind="stable")  # fmt: skip
    page.context["grids"] = {
        "borderline": cards(borderline(decided, BORDERLINE_PER_SIDE)) if len(decided) else [],
        "kept": cards(kept_sample),
        "rejected": cards(rejected_sample),
        "kept_total": len(kept),
        "rejected_total": len(rejected),
        "seed": seed,
        "data_missing": run.data is None or not run.data.is_dir(),
        "threshold": run.threshold,
    }
    if run.data is None or not run.data.is_dir():
        page.note(f"DATA ({run.data}) is not there: the source images are not shown (give --data)")


def _features(run: GenerationRun, digests: Sequence[str], paths: Sequence[Path], embedder: Any,
              cache: EmbeddingCache | None) -> np.ndarray:  # fmt: skip
    """Features of images by content hash: from the filter's cache, the rest computed when an embedder is given."""
    vectors: list[np.ndarray] = []
    missing: list[Path] = []
    for digest, path in zip(digests, paths, strict=True):
        vector = cache.get(digest) if cache is not None and digest else None
        if vector is not None:
            vectors.append(np.asarray(vector, dtype=np.float64))
        else:
            missing.append(path)
    if missing and embedder is not None:
        from diffcoremix.embedders.cache import embed_files

        readable = [p for p in missing if _readable(p)]
        if readable:
            vectors.extend(np.asarray(embed_files(embedder, readable), dtype=np.float64))
    return np.stack(vectors) if vectors else np.zeros((0, 0))


def _readable(path: Path) -> bool:
    try:
        open_image(path)
    except (DiffCoReMixError, OSError):
        return False
    return True


def _distances(page: _Page, run: GenerationRun, seed: int) -> None:
    decided = _decided(run)
    kept = decided[decided.accepted]
    embedder_id = run.filter_report.get("embedder")
    context: dict[str, Any] = {"rows": [], "samples": DISTANCE_SAMPLES, "embedder": embedder_id, "note": ""}
    page.context["distances"] = context
    if not len(kept) or not embedder_id:
        context["note"] = "no kept images yet"
        return
    root = Path(run.filter_options["cache_dir"]) if run.filter_options.get("cache_dir") else run.out / CACHE_DIR
    cache = EmbeddingCache(root, str(embedder_id))
    classes, which = _shown_classes(decided)
    embedder = None
    rng = np.random.default_rng(seed)
    sampled: list[tuple[str, np.ndarray, np.ndarray]] = []
    first_try = True
    for cls in classes:
        real_rows = decided[decided.class_folder == cls].drop_duplicates("source")
        gen_rows = kept[kept.class_folder == cls]
        real_rows = real_rows.iloc[np.sort(rng.permutation(len(real_rows))[:DISTANCE_SAMPLES])]
        gen_rows = gen_rows.iloc[np.sort(rng.permutation(len(gen_rows))[:DISTANCE_SAMPLES])]
        real_paths = [run.data / s if run.data else Path(s) for s in real_rows.source.astype(str)]
        gen_paths = [run.out / o for o in gen_rows.output.astype(str)]
        real_digests = list(real_rows.source_sha256.fillna("").astype(str))
        gen_digests = list(gen_rows.output_sha256.fillna("").astype(str))
        if first_try and not all(cache.get(d) is not None for d in [*real_digests[:4], *gen_digests[:4]]):
            embedder = _load_embedder(page, run)  # only when the cache does not hold the features
            first_try = False
        real = _features(run, real_digests, real_paths, embedder, cache)
        generated = _features(run, gen_digests, gen_paths, embedder, cache)
        name = str(gen_rows.class_name.iloc[0]) if len(gen_rows) else cls
        if len(real) and len(generated):
            sampled.append((name, real, generated))
        rows_result = (
            distance(name, real, generated, seed=seed)
            if len(real) and len(generated)
            else Distance(
                name, len(real), len(generated), None, None, None, "no features (not cached, embedder not loadable)"
            )
        )
        context["rows"].append(_distance_row(rows_result))
    if sampled:
        context["rows"].append(_distance_row(pooled(sampled, seed=seed)))
    dims = next((r.shape[1] for _, r, _ in sampled), None)
    context["note"] = (
        f"{which}; real: each class's distinct source images; up to {DISTANCE_SAMPLES} per side and class "
        f"(seeded); features: {embedder_id}" + (f", {dims} dimensions" if dims else "")
    )


def _distance_row(d: Distance) -> dict[str, Any]:
    return {
        "cls": d.cls, "real": d.real, "generated": d.generated,
        "kid": "-" if d.kid is None else f"{d.kid:.4f} ± {d.kid_std:.4f}",
        "fid": "-" if d.fid is None else f"{d.fid:.3f}", "note": d.note,
    }  # fmt: skip


def _load_embedder(page: _Page, run: GenerationRun) -> Any:
    """The filter's embedder, to compute features the cache lacks; None (and a note) when it cannot be loaded."""
    from diffcoremix.embedders import default_embedder
    from diffcoremix.embedders.models import load_embedder

    spec = run.filter_options.get("embedder") or default_embedder(run.settings.get("settings", {}).get("model"))
    try:
        return load_embedder(str(spec), "cpu")
    except DiffCoReMixError as err:
        page.note(f"features missing from the embedding cache, and the embedder {spec} cannot be loaded: {err}")
        return None


def _mixing(page: _Page, run: GenerationRun, seed: int) -> None:
    from diffcoremix.mix.preview import preview_figure, preview_rows

    context: dict[str, Any] = {"uri": None, "note": ""}
    page.context["mixing"] = context
    if run.data is None or not run.data.is_dir():
        context["note"] = "DATA is not there: no preview"
        return
    if not run.filtered:
        context["note"] = "not filtered yet: no kept images to mix with"
        return
    try:
        rows = preview_rows(run.data, run.out, per_class=2, max_classes=MIX_CLASSES, size=64, seed=seed)
    except DiffCoReMixError as err:
        context["note"] = f"no preview: {err}"
        return
    context["uri"] = png_uri(png_bytes(preview_figure(rows)))
    context["note"] = (f"the first {MIX_CLASSES} classes, 2 images each; partners are kept generations "
                       "(their own counterpart when it was kept)")  # fmt: skip


def _training(page: _Page, compare: CompareFolder | None, evaluation: EvalFolder | None,
              runs: Sequence[TrainingRun]) -> None:  # fmt: skip
    context: dict[str, Any] = {"results": [], "caption": "", "overhead": None, "curves": None, "eval": [],
                               "confusion": [], "saliency": None, "runs": len(runs)}  # fmt: skip
    page.context["training"] = context
    if compare is not None:
        context["caption"] = compare.caption
        context["results"] = [_result_row(r) for r in compare.results]
        context["overhead"] = figure_uri(compare.plot) if compare.plot else None
    if runs:
        shown = list(runs)[:MAX_RUNS]
        context["curves"] = png_uri(training_curves_png(shown))
        if len(runs) > MAX_RUNS:
            context["curves_note"] = f"the first {MAX_RUNS} of {len(runs)} runs"
    if evaluation is not None:
        context["eval"] = [{"name": str(r.get("name")), "top1": _pct(r.get("top1")), "top5": _pct(r.get("top5")),
                            "loss": _num(r.get("loss")), "n": r.get("n", "-")} for r in evaluation.runs]  # fmt: skip
        context["confusion"] = [{"name": name, "uri": figure_uri(path)}
                                for name, path in list(evaluation.confusion.items())[:MAX_RUNS]]  # fmt: skip
        context["saliency"] = figure_uri(evaluation.saliency) if evaluation.saliency else None
    else:
        context["eval_note"] = (
            "confusion matrices and Grad-CAM maps come from `diffcoremix eval ... -o EVAL`: pass --eval EVAL"
        )


def _pct(value: Any) -> str:
    try:
        return f"{100 * float(value):.1f}"
    except (TypeError, ValueError):
        return "-"


def _num(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "-"


def _result_row(row: dict[str, str]) -> dict[str, str]:
    def pm(mean: str, std: str) -> str:
        return _pct(mean) + (f" ± {_pct(std)}" if std else "")

    diff = row.get("top1_diff") or ""
    low, high = row.get("top1_diff_low") or "", row.get("top1_diff_high") or ""
    interval = f" [{_signed(low)}, {_signed(high)}]" if low and high else ""
    overhead = row.get("overhead") or ""
    return {
        "label": row.get("label", ""), "partners": row.get("partners", "") or "-", "seeds": row.get("seeds", ""),
        "top1": pm(row.get("top1_mean", ""), row.get("top1_std", "")),
        "top5": pm(row.get("top5_mean", ""), row.get("top5_std", "")),
        "diff": (_signed(diff) + interval) if diff else "-",
        "overhead": f"{100 * float(overhead):+.1f}%" if overhead else "-",
    }  # fmt: skip


def _signed(value: str) -> str:
    try:
        return f"{100 * float(value):+.1f}"
    except ValueError:
        return "-"


def _render(page: _Page, run: GenerationRun) -> str:
    from jinja2 import Environment, StrictUndefined

    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    source = resources.files("diffcoremix.report").joinpath("templates/report.html.j2").read_text(encoding="utf-8")
    template = environment.from_string(source)
    return template.render(page=page, c=page.context, generator=f"{GENERATOR_MARK} {__version__}",
                           out_name=run.out.name)  # fmt: skip
