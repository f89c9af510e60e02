"""The plan is never held whole: prompts are built block by block where they are read, ``generate`` reads its plan
batch by batch and resumes from an index of a few bytes per candidate, and the manifest is compacted as a stream.
(What that saves is measured by ``benchmarks/plan_memory.py``.)"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from diffcoremix import PromptsConfig, build_prompts
from diffcoremix.augmentation import _Attempts, _redo
from diffcoremix.cluster.ray_backend import PlanWindow
from diffcoremix.filter.runner import FilterReport, Scored
from diffcoremix.generate import GenerateConfig, generate, read_manifest
from diffcoremix.generate.resume import output_relpath, resume_index, verdict
from diffcoremix.manifest.records import ManifestWriter
from diffcoremix.prompts import builder
from diffcoremix.prompts.choices import ContextChoice, ContextRequest
from diffcoremix.seeds import derive_seed

from .helpers import make_class_folders


class _Counting:
    """A context selector that counts the requests it is asked to choose for."""

    def __init__(self) -> None:
        self.requests = 0

    def choose(self, requests: list[ContextRequest]) -> list[ContextChoice]:
        self.requests += len(requests)
        return [ContextChoice(f"scene {r.seed % 7}") for r in requests]


def test_a_plan_of_twenty_million_candidates_is_built_only_where_it_is_read(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 1, "002.dog": 1})
    selector = _Counting()
    plan = build_prompts(data, PromptsConfig(per_image=10_000_000), selector=selector)
    assert len(plan) == 20_000_000
    assert plan.sources == 2
    assert selector.requests == 0
    last = plan[-1]
    assert last.key == "002.dog/img_000.png#9999999"
    assert last.seed == derive_seed(0, "generate", "002.dog/img_000.png", 9_999_999)
    tail = 20_000_000 % builder.PLAN_BLOCK
    assert selector.requests == tail  # one block: the last, partial one
    assert plan[-1] == last
    assert selector.requests == tail


def test_blocks_slices_and_iteration_agree_and_conflicts_count_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_class_folders(tmp_path / "data", {"001.blurry_owl": 3, "002.cat": 2})
    whole = build_prompts(data, PromptsConfig(per_image=3)).records  # one block
    monkeypatch.setattr(builder, "PLAN_BLOCK", 4)
    plan = build_prompts(data, PromptsConfig(per_image=3))
    assert list(plan) == whole
    assert len(plan) == 15
    assert [plan[i] for i in range(15)] == whole
    assert [plan[i] for i in range(-1, -16, -1)] == whole[::-1]
    for start, stop in ((0, 15), (2, 7), (3, 4), (4, 8), (5, 5), (7, 3), (13, 99), (-6, -1)):
        assert plan[start:stop] == whole[start:stop], (start, stop)
    assert plan[1:12:3] == whole[1:12:3]
    assert plan[::-2] == whole[::-2]
    with pytest.raises(IndexError):
        plan[15]
    list(plan)  # a second pass builds every block again: counted once
    owl = [r for r in whole if r.class_folder == "001.blurry_owl"]
    assert all("blurry" in r.dropped_negatives for r in owl)
    assert {c.term: n for c, n in plan.conflicts.items()} == {"blurry": len(owl)}


def test_generate_reads_its_plan_by_batch_in_any_block_and_shard_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 3, "002.dog": 2})
    prompts = PromptsConfig(per_image=2)
    tiny = GenerateConfig(preset="tiny", num_inference_steps=1, batch_size=3)
    generate(data, tmp_path / "whole", prompts, tiny)
    monkeypatch.setattr(builder, "PLAN_BLOCK", 4)  # blocks that batches of 3 straddle
    for rank in (1, 0):
        generate(data, tmp_path / "blocks", prompts, GenerateConfig(**{**vars(tiny), "rank": rank, "world_size": 2}))
    whole, blocks = read_manifest(tmp_path / "whole"), read_manifest(tmp_path / "blocks")
    assert blocks.key.tolist() == [r.key for r in build_prompts(data, prompts)]
    for column in ("key", "index", "prompt", "negative_prompt", "seed", "output_sha256"):
        assert blocks[column].tolist() == whole[column].tolist(), column
    assert sorted(blocks["rank"].unique()) == [0, 1]
    again = generate(data, tmp_path / "blocks", prompts, GenerateConfig(**{**vars(tiny), "rank": 0, "world_size": 2}))
    assert (again.skipped, again.generated) == (again.shard, 0)


def _record(key: str, index: int, status: str = "ok", note: str = "") -> str:
    return json.dumps({"index": index, "key": key, "status": status, "note": note}) + "\n"


def test_compaction_streams_the_latest_line_of_each_key_in_plan_order(tmp_path: Path) -> None:
    path = tmp_path / "shard.jsonl"
    lines = [
        _record("c", 2, note="first"),
        _record("a", 0, "error"),
        _record("b", 1),
        _record("a", 0, note="made"),  # the latest success wins...
        _record("a", 0, "error", "later failure"),  # ...over a later failure
        _record("c", 2, note="again"),  # the latest success
        _record("d", 3, "error", "one"),
        _record("d", 3, "error", "two"),  # no success: the latest failure
        '{"index": 4, "key": "e", "sta',  # a torn line, repaired with a newline by the writer
    ]
    path.write_text("".join(lines))
    writer = ManifestWriter(path)
    writer.compact()
    assert path.read_text() == lines[3] + lines[2] + lines[5] + lines[7]
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    writer.compact()  # already compact: left untouched
    assert path.stat().st_mtime_ns == before - 10**9
    assert [p.name for p in tmp_path.iterdir()] == ["shard.jsonl"]  # no temporary file left
    path.write_text(lines[5] + lines[2])  # one line per key, out of plan order
    writer.compact()
    assert path.read_text() == lines[2] + lines[5]


def test_the_resume_index_reuses_only_what_this_run_would_make_now(tmp_path: Path) -> None:
    record = build_prompts(make_class_folders(tmp_path / "data", {"001.cat": 1}), PromptsConfig())[0]
    image = tmp_path / "out" / output_relpath(record)
    image.parent.mkdir(parents=True)
    image.write_bytes(b"pixels")
    made = {
        "key": record.key,
        "status": "ok",
        "output": output_relpath(record),
        "output_sha256": hashlib.sha256(b"pixels").hexdigest(),
        "source_sha256": "ab" * 32,
        "settings_sha256": "s1",
        **{f: getattr(record, f) for f in ("source", "seed", "prompt", "negative_prompt")},
    }
    failed = {"key": record.key, "status": "error", "output": None, "output_sha256": None}
    folder = tmp_path / "out"

    def check(
        records: list[dict[str, object]], planned: object = record, digest: str = "s1", now: str = "ab" * 32
    ) -> str:
        return verdict(folder, resume_index(records), planned, digest, lambda source: now)

    assert check([made]) == "done"
    assert check([failed, made, failed]) == "done"  # the latest success wins over a later failure
    assert check([failed]) == check([]) == "todo"
    assert check([made], digest="s2") == "todo"  # other generation settings
    for field, value in (("prompt", "another"), ("negative_prompt", ""), ("seed", record.seed + 1)):
        assert check([made], dataclasses.replace(record, **{field: value})) == "todo", field
    assert check([made], dataclasses.replace(record, attempt=1)) == "todo"  # another output path
    assert check([made], now="cd" * 32) == "changed"  # the source photo was replaced since
    assert check([made, {**made, "output_sha256": "not a digest"}]) == "todo"  # the latest success is unusable
    image.write_bytes(b"damaged")
    assert check([made]) == "todo"


def test_sample_contexts_are_the_same_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 3, "002.dog": 2})
    config = PromptsConfig(pack="pets", context="sample", context_embedder="tiny", top_k=1, per_image=2)
    whole = build_prompts(data, config).records
    monkeypatch.setattr(builder, "PLAN_BLOCK", 3)  # blocks that cut an image's counterparts apart
    blocks = build_prompts(data, config).records
    assert [r.context for r in blocks] == [r.context for r in whole]
    assert [r.context_score for r in blocks] == pytest.approx([r.context_score for r in whole], abs=1e-5)


def _list_redo(latest: dict[str, Any], budget: dict[str, int], rows: list[dict[str, Any]]) -> list[Any]:
    """The rule of augment's rounds over a whole list (what ``_redo`` did before the plan streamed)."""
    decided = {r["key"]: r["accepted"] for r in rows}
    accepted = Counter(r["class_folder"] for r in rows if r["accepted"])
    redo: list[Any] = []
    for cls, wanted in budget.items():
        rejected = [r for r in latest.values() if r.class_folder == cls and decided.get(r.key) is not True]
        redo += rejected[: max(0, wanted - accepted[cls])]
    return redo


def test_augment_rounds_read_the_plan_as_they_read_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "PLAN_BLOCK", 4)
    data = make_class_folders(tmp_path / "data", {"001.cat": 3, "002.dog": 2, "003.owl": 2})
    plan = build_prompts(data, PromptsConfig(per_image=2))
    whole = list(plan)
    assert plan.candidates.class_counts() == dict(Counter(r.class_folder for r in whole))
    attempts = _Attempts(plan)
    retried = [whole[1].retry(1), whole[6].retry(1), whole[9].retry(1)]
    attempts.retried += retried
    full = whole + retried
    assert len(attempts) == len(full) == 17
    assert [attempts[i] for i in range(-17, 17)] == full + full
    for start, stop in ((0, 17), (3, 9), (12, 15), (13, 16), (14, 17), (16, 99), (5, 5)):
        assert attempts[start:stop] == full[start:stop], (start, stop)
    keys = attempts.keys
    assert all(r.key in keys for r in full)
    for other in (
        "001.cat/img_000.png#2",
        "001.cat/img_009.png#0",
        "nope",
        whole[0].retry(1).key,
        whole[1].retry(2).key,
    ):
        assert other not in keys, other
    rng = random.Random(0)
    latest = {r.key.split("@", 1)[0]: r for r in retried}
    budget = plan.candidates.class_counts()
    for _ in range(50):
        rows = [{"key": r.key, "class_folder": r.class_folder, "accepted": rng.random() < 0.4} for r in full]
        rows = [r for r in rows if rng.random() < 0.9]  # some were never decided (failed)
        scored = Scored(FilterReport(0.6, "prototype", "tiny", {}), rows, ())
        assert _redo(plan, latest, budget, scored) == _list_redo({**{r.key: r for r in whole}, **latest}, budget, rows)


def test_a_ray_shard_is_sent_only_its_window_of_the_plan(tmp_path: Path) -> None:
    plan = build_prompts(
        make_class_folders(tmp_path / "data", {"001.cat": 3, "002.dog": 2}), PromptsConfig(per_image=2)
    )
    whole = list(plan)
    window = PlanWindow(whole[4:8], 4, 10)
    assert len(window) == 10
    assert window[4:8] == whole[4:8]
    assert window[6:8] == whole[6:8]
    assert window[5] == whole[5]
    assert window[9:9] == []
    for outside in (slice(2, 6), slice(6, 10), slice(0, 10)):
        with pytest.raises(IndexError):
            window[outside]
    with pytest.raises(IndexError):
        window[8]
