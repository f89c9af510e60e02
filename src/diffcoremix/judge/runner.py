"""``diffcoremix judge``: an independent judge of what the generated images show.

A classifier that is not the filter's embedder (:mod:`diffcoremix.judge.classifiers`) labels every generated image
of OUT, and whether it sees the class the image was prompted for is recorded in ``OUT/judge.jsonl``, one line per
candidate, joined into :func:`~diffcoremix.manifest.records.read_manifest` (``JUDGE_COLUMNS``). Agreement overall,
per class, and among the images the filter accepted and rejected tells, through a second network's eyes, how often
the generator draws what it was asked for and whether the filter keeps the right images.

The judge argmaxes over all of its own classes (a CIFAR-10 network may see a frog in a picture of a cat, whatever
OUT's classes); a candidate whose class the judge does not know is labelled but not judged (``agrees`` null). A
rerun judges only what the file does not hold for this judge and these bytes: a line is reused when its judge id
and image SHA-256 are the current ones; a different judge replaces the file. The file is rewritten atomically
every few batches, so a killed run loses at most those batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffcoremix.atomic import write_text_if_changed
from diffcoremix.cells import text_cell
from diffcoremix.cluster.config import ExecutorConfig
from diffcoremix.cluster.executor import ray_cluster
from diffcoremix.data.images import decode_image, read_bytes, to_rgb
from diffcoremix.devices import resolve_device
from diffcoremix.errors import ConfigError, DatasetError, ImageReadError
from diffcoremix.judge.classes import ClassMap, map_classes
from diffcoremix.judge.classifiers import Classifier, JudgeError, load_classifier
from diffcoremix.manifest.decisions import read_decisions
from diffcoremix.manifest.layout import JUDGE_FILE, OutputFolder, OutputFolderError
from diffcoremix.manifest.ownership import open_output
from diffcoremix.manifest.records import latest_by_key, read_judgements, read_records

if TYPE_CHECKING:
    from diffcoremix.cluster.ray_backend import RayCluster

logger = logging.getLogger(__name__)

SAVE_EVERY = 8
"""Batches between two writes of ``OUT/judge.jsonl`` (and one at the end)."""
JUDGE_FIELDS = ("key", "class_folder", "judge", "judge_class", "judge_label", "judge_confidence", "agrees",
                "output_sha256", "error")  # fmt: skip
"""The fields of a line of ``OUT/judge.jsonl``; ``output_sha256`` is the SHA-256 of the bytes judged, ``error`` why
an image could not be read (then the line is redone by the next run)."""


@dataclass
class Agreement:
    """How many images of a group the judge saw, judged, and agreed with."""

    images: int = 0
    judged: int = 0
    """Images whose class the judge knows (and that could be read)."""
    agreed: int = 0

    @property
    def rate(self) -> float | None:
        """``agreed / judged``; None when nothing was judged."""
        return self.agreed / self.judged if self.judged else None

    @property
    def not_judged(self) -> int:
        return self.images - self.judged

    def add(self, agrees: bool | None) -> None:
        self.images += 1
        self.judged += agrees is not None
        self.agreed += agrees is True

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "judged": self.judged, "agreed": self.agreed, "rate": self.rate}


@dataclass
class JudgeResult:
    """What the judge found in OUT."""

    out: Path
    judge: str
    """The judge's id."""
    classes: dict[str, Agreement]
    """OUT class folder -> agreement of its images, in label order."""
    unknown: tuple[str, ...]
    """OUT's classes that the judge does not know (their images are not judged)."""
    judged: int
    """Images labelled by this call."""
    reused: int
    """Images whose earlier judgement (same judge, same bytes) was kept."""
    unreadable: list[str] = field(default_factory=list)
    """Keys of images that could not be read (not judged; retried by the next run)."""
    replaced: str | None = None
    """The id of another judge whose judgements this call replaced."""
    by_decision: dict[str, Agreement] | None = None
    """``accepted`` and ``rejected``: agreement among the filter's decisions, when OUT was filtered."""

    @property
    def total(self) -> Agreement:
        groups = self.classes.values()
        return Agreement(sum(a.images for a in groups), sum(a.judged for a in groups), sum(a.agreed for a in groups))

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "judge": self.judge, "total": self.total.to_dict(),
                "classes": {c: a.to_dict() for c, a in self.classes.items()}, "unknown": list(self.unknown),
                "judged": self.judged, "reused": self.reused, "unreadable": self.unreadable, "replaced": self.replaced,
                "by_decision": None if self.by_decision is None else
                {k: a.to_dict() for k, a in self.by_decision.items()}}  # fmt: skip

    def to_text(self) -> str:
        width = max([len(text_cell(c)) for c in self.classes] + [len("rejected")])
        lines = [f"judge {self.judge}: {self.judged} image(s) judged now, {self.reused} kept from an earlier run"]
        if self.replaced:
            lines.append(f"(replaced the judgements of {self.replaced})")
        lines.append(f"{'class':<{width}}  {'images':>6}  {'judged':>6}  {'agree':>6}  {'rate':>6}")
        rows = [*self.classes.items(), ("all", self.total)]
        if self.by_decision is not None:
            rows += list(self.by_decision.items())
        for name, a in rows:
            rate = f"{a.rate:6.1%}" if a.rate is not None else f"{'-':>6}"
            lines.append(f"{text_cell(name):<{width}}  {a.images:>6}  {a.judged:>6}  {a.agreed:>6}  {rate}")
        if self.unknown:
            count = sum(self.classes[c].images for c in self.unknown)
            names = ", ".join(map(text_cell, self.unknown[:5])) + (", ..." if len(self.unknown) > 5 else "")
            unknown = f"{len(self.unknown)} class(es) the judge does not know"
            lines.append(f"not judged: {count} image(s) of {unknown}: {names}")
        if self.unreadable:
            lines.append(f"not judged: {len(self.unreadable)} unreadable image(s), e.g. {self.unreadable[0]}")
        return "\n".join(lines)


def judge(
    out: str | Path,
    classifier: str | Classifier,
    *,
    batch_size: int = 64,
    device: str = "auto",
    overwrite: bool = False,
    executor: ExecutorConfig | None = None,
    progress: bool = False,
) -> JudgeResult:
    """Label every generated image of OUT with an independent classifier and record agreement with its class.

    Args:
        out: a ``generate`` or ``augment`` output folder.
        classifier: a classifier spec (``resnet56:PATH``, ``run:RUN``, ``tiny``...) or a :class:`Classifier`.
        batch_size: images per forward pass.
        device: where the classifier runs (``auto``: CUDA when available).
        overwrite: judge every image afresh (by default only those this judge has not judged in these bytes).
        executor: where the classifier runs: this process (default), or Ray actors (each classifies slices of the
            images; this process writes the file). On Ray ``classifier`` must be a spec.
        progress: show a progress bar.

    Returns:
        The agreement figures (the labels are in ``OUT/judge.jsonl`` and :func:`read_manifest`).

    Raises:
        OutputFolderError: OUT is missing or not a diffcoremix output. JudgeError: the judge is the filter's
            embedder, or knows none of OUT's classes. UnknownNameError, ModelLoadError: a bad spec or checkpoint.

    Example:
        >>> result = judge("out", "resnet56:../shared/models/resnet56_cifar10.th")  # doctest: +SKIP
        >>> result.total.rate, result.by_decision["accepted"].rate  # doctest: +SKIP
    """
    out = Path(out)
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, ">= 1")
    if not out.is_dir():
        raise OutputFolderError(f"{out} does not exist" if not out.exists() else f"{out} is not a folder")
    if not OutputFolder(out).is_ours():
        raise OutputFolderError(f"{out} is not a diffcoremix output (no run.json): judge reads the images of a "
                                "generate or augment output folder")  # fmt: skip
    executor = executor or ExecutorConfig()
    if executor.on_ray and not isinstance(classifier, str):
        raise ConfigError("executor", executor.executor, "local when a classifier object is passed (Ray workers "
                          "load the classifier from its spec)")  # fmt: skip
    with open_output(out, must_exist=True) as folder:
        records, out_classes, labels = _candidates(folder)
        spec = classifier
        if isinstance(classifier, str):
            classifier = load_classifier(classifier, resolve_device(device), out_classes)
        _check_independent(folder, classifier)
        mapping = map_classes(out_classes, classifier.classes)
        if not mapping.to_judge:
            raise JudgeError(_no_overlap(out, out_classes, classifier))
        earlier, replaced = _earlier(folder, classifier.id, overwrite)
        job = _Job(folder, classifier, mapping, labels, records, earlier)
        with ray_cluster(executor, device) as cluster:
            if cluster is None:
                job.run(batch_size, progress)
            else:
                task = _Slice(str(spec), cluster.worker_device if device == "auto" else device, out_classes,
                              str(folder.path), mapping, labels, batch_size)  # fmt: skip
                job.run_on(cluster, task, progress)
        return _result(folder, classifier, mapping, job, replaced, out_classes)


def _candidates(folder: OutputFolder) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, int]]:
    """OUT's generated images (plan order), and its classes: folder -> prompt word and folder -> label."""
    records = sorted(latest_by_key(read_records(folder.path)).values(), key=lambda r: (r.get("index", 0), r["key"]))
    if not records:
        raise DatasetError(f"{folder.path} has no generation manifest records to judge")
    by_label = sorted(records, key=lambda r: (r["label"], r["class_folder"]))
    out_classes = {r["class_folder"]: r.get("class_name") or r["class_folder"] for r in by_label}
    labels = {r["class_folder"]: int(r["label"]) for r in by_label}
    return [r for r in records if r.get("status") == "ok"], out_classes, labels


def _check_independent(folder: OutputFolder, classifier: Classifier) -> None:
    """Refuse the filter's own embedder as the judge: it would grade its own decisions."""
    embedders = {d.get("embedder") for d in read_decisions(folder.path).values()}
    if classifier.model_id in embedders:
        raise JudgeError(
            f"the judge {classifier.model_id} is the filter's embedder in {folder.path}: a judge is never the "
            "filter's embedder in the same experiment; choose another --classifier (resnet56:PATH when the filter "
            "used resnet20:PATH)"
        )


def _no_overlap(out: Path, out_classes: Mapping[str, str], classifier: Classifier) -> str:
    def some(names: Sequence[str]) -> str:
        return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")

    return (f"the judge {classifier.id} knows none of the {len(out_classes)} class(es) of {out} "
            f"({some(list(out_classes))}); its classes: {some(classifier.classes)}")  # fmt: skip


def _earlier(folder: OutputFolder, judge_id: str, overwrite: bool) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The reusable lines of an earlier run (this judge's), and the id of another judge whose file is replaced."""
    earlier = read_judgements(folder.path)
    others = sorted({str(line.get("judge")) for line in earlier.values()} - {judge_id})
    if others:
        logger.warning("%s: replacing the judgements of %s with those of %s", folder.path, ", ".join(others),
                       judge_id)  # fmt: skip
    if overwrite and earlier:
        logger.info("%s: judging every image afresh (--overwrite)", folder.path)
    if overwrite or others:
        earlier = {}
    return earlier, ", ".join(others) or None


class _Job:
    """One pass over OUT's images: reuse what is current, classify the rest in batches, save as it goes."""

    def __init__(self, folder: OutputFolder, classifier: Classifier, mapping: ClassMap, labels: Mapping[str, int],
                 records: Sequence[dict[str, Any]], earlier: Mapping[str, dict[str, Any]]) -> None:  # fmt: skip
        self.folder, self.classifier, self.mapping, self.labels = folder, classifier, mapping, labels
        self.records, self.earlier = records, earlier
        self.lines: dict[str, dict[str, Any]] = {}
        self.judged = self.reused = self.batches = 0
        self.pending: list[tuple[dict[str, Any], str, torch.Tensor]] = []
        self.persist = True

    def run(self, batch_size: int, progress: bool, *, persist: bool = True) -> None:
        """Judge every record here; ``persist``: write the file every few batches and at the end."""
        from tqdm import tqdm

        self.persist = persist
        for record in tqdm(self.records, desc="judge", unit="image", disable=not progress):
            self._visit(record)
            if len(self.pending) >= batch_size:
                self._classify()
        self._classify()
        if persist:
            self.save()

    def run_on(self, cluster: RayCluster, task: _Slice, progress: bool) -> None:
        """Judge on Ray: the actors judge slices of SAVE_EVERY batches; the lines are written here as they come."""
        size = task.batch_size * SAVE_EVERY
        slices = [self.records[i : i + size] for i in range(0, len(self.records), size)]

        def call(actor: Any, records: Sequence[dict[str, Any]]) -> Any:
            earlier = {r["key"]: self.earlier[r["key"]] for r in records if r["key"] in self.earlier}
            return actor.run.remote(dataclasses.replace(task, records=list(records), earlier=earlier))

        for lines, judged, reused in cluster.map(call, slices, desc="judge (slices)", progress=progress):
            self.lines.update(lines)
            self.judged += judged
            self.reused += reused
            self.save()

    def _visit(self, record: dict[str, Any]) -> None:
        key, path = record["key"], self.folder / record["output"]
        try:
            data = read_bytes(path)
            sha = hashlib.sha256(data).hexdigest()
            before = self.earlier.get(key)
            if before is not None and before.get("judge") == self.classifier.id and before.get("output_sha256") == sha:
                self.lines[key] = before
                self.reused += 1
                return
            tensor = self.classifier.preprocess(to_rgb(decode_image(data, path)))
        except ImageReadError as err:
            logger.warning("not judged: %s", err)
            self.lines[key] = self._line(record, None, None, None, error=str(err))
            return
        self.pending.append((record, sha, tensor))

    def _classify(self) -> None:
        if not self.pending:
            return
        indices, confidences = self.classifier.classify(torch.stack([t for _, _, t in self.pending]))
        for (record, sha, _), index, confidence in zip(self.pending, indices.tolist(), confidences.tolist(),
                                                       strict=True):  # fmt: skip
            self.lines[record["key"]] = self._line(record, int(index), float(confidence), sha)
        self.judged += len(self.pending)
        self.pending = []
        self.batches += 1
        if self.persist and self.batches % SAVE_EVERY == 0:
            self.save()

    def _line(self, record: dict[str, Any], index: int | None, confidence: float | None, sha: str | None,
              error: str | None = None) -> dict[str, Any]:  # fmt: skip
        """A line of ``judge.jsonl``: what the judge sees, and whether it is the class the image was prompted for."""
        known = self.mapping.to_judge.get(record["class_folder"])
        seen = None if index is None else self.mapping.to_out.get(index)
        return {
            "key": record["key"],
            "class_folder": record["class_folder"],
            "judge": self.classifier.id,
            "judge_class": None if index is None else self.classifier.classes[index],
            "judge_label": None if seen is None else self.labels[seen],
            "judge_confidence": None if confidence is None else round(confidence, 6),
            "agrees": None if known is None or index is None else index == known,
            "output_sha256": sha,
            "error": error,
        }

    def save(self) -> None:
        """Write every line decided so far, and the earlier lines not yet visited, in plan order (atomically)."""
        current = {**self.earlier, **self.lines}
        keys = [r["key"] for r in self.records if r["key"] in current]
        text = "".join(json.dumps({f: current[k].get(f) for f in JUDGE_FIELDS}, ensure_ascii=False) + "\n"
                       for k in keys)  # fmt: skip
        write_text_if_changed(self.folder / JUDGE_FILE, text)


@dataclass(frozen=True)
class _Slice:
    """A Ray actor's share of a judge: these records, judged by the actor's copy of the classifier (loaded once
    per actor); returns the lines and the counts, and writes nothing."""

    spec: str
    device: str
    out_classes: Mapping[str, str]
    out: str
    mapping: ClassMap
    labels: Mapping[str, int]
    batch_size: int
    records: Sequence[dict[str, Any]] = ()
    earlier: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, worker: Any) -> tuple[dict[str, dict[str, Any]], int, int]:
        key = ("classifier", self.spec, self.device)
        classifier = worker.model(key, lambda: load_classifier(self.spec, self.device, self.out_classes))
        job = _Job(OutputFolder(Path(self.out)), classifier, self.mapping, self.labels, self.records, self.earlier)
        job.run(self.batch_size, progress=False, persist=False)
        return job.lines, job.judged, job.reused


def _result(folder: OutputFolder, classifier: Classifier, mapping: ClassMap, job: _Job, replaced: str | None,
            out_classes: Mapping[str, str]) -> JudgeResult:  # fmt: skip
    classes = {c: Agreement() for c in out_classes}
    for record in job.records:
        classes[record["class_folder"]].add(job.lines[record["key"]]["agrees"])
    decisions = read_decisions(folder.path)
    by_decision = None
    if decisions:  # agreement among the images the filter kept, and among those it rejected
        by_decision = {"accepted": Agreement(), "rejected": Agreement()}
        for record in job.records:
            if (decision := decisions.get(record["key"])) is not None:
                group = by_decision["accepted" if decision.get("accepted") else "rejected"]
                group.add(job.lines[record["key"]]["agrees"])
    unreadable = [k for k, line in job.lines.items() if line.get("error")]
    return JudgeResult(folder.path, classifier.id, classes, mapping.unknown, job.judged, job.reused, unreadable,
                       replaced, by_decision)  # fmt: skip
