"""Prompt plans: contextual prompts, negative conflicts, budgets, determinism; and ``diffcoremix prompts``."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from diffcoremix import PromptsConfig, build_prompts, derive_seed, list_images
from diffcoremix.cli.main import main
from diffcoremix.counterparts import count_for_fraction, plan_candidates
from diffcoremix.prompts.context import ContextChoice, ContextRequest
from diffcoremix.prompts.negatives import term_in

from .helpers import make_class_folders, run_cli, run_in_process

# Folder names as Stanford Cars spells its classes (make, model, body, year).
CARS = {
    "Ram_C-V_Cargo_Van_Minivan_2012": 3,
    "AM_General_Hummer_SUV_2000": 2,
    "Chevrolet_Corvette_Convertible_2012": 4,
}


@pytest.fixture
def cars(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "cars", CARS)


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_paper_pack_on_cars_drops_car_and_says_so(cars: Path, tmp_path: Path) -> None:
    out = tmp_path / "prompts.jsonl"
    result = run_cli("prompts", cars, "--pack", "paper", "--domain", "car", "--seed", "0", "-o", out)
    assert result.returncode == 0, result.stderr
    records = _records(out)
    assert len(records) == sum(CARS.values())
    for r in records:
        negatives = str(r["negative_prompt"]).split(", ")
        assert "car" not in negatives
        assert "train" in negatives  # terms that do not conflict are kept
        assert "car" in r["dropped_negatives"]  # type: ignore[operator]
        assert ", a car, " in str(r["prompt"])
    # The warning names the term and what it contradicts, once, with the number of prompts affected.
    assert "negative term 'car' contradicts the domain word 'car': dropped from 9 prompt(s)" in result.stderr
    # "Cargo" in a class name is not the word "car": no conflict reported against that class name.
    assert "class name 'Ram C-V Cargo Van Minivan 2012'" not in result.stderr
    assert out.with_suffix(".config.yaml").is_file()


def test_same_seed_same_bytes_other_seed_other_file(cars: Path, tmp_path: Path) -> None:
    files = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.jsonl"
        assert (
            main(["prompts", str(cars), "--pack", "paper", "--domain", "car", "--seed", seed, "-o", str(out), "-q"])
            == 0
        )
        files.append(out.read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]


def test_context_conflicts_are_dropped_per_prompt(cars: Path) -> None:
    plan = build_prompts(cars, PromptsConfig(pack="paper", domain="car", per_image=4))
    sky = [r for r in plan.records if term_in("sky", r.context)]  # not "skyline": whole words only
    calm = [r for r in plan.records if "sky" not in r.context and "landscape" not in r.context]
    assert sky
    assert calm
    assert all("sky" in r.dropped_negatives for r in sky)
    assert all("sky" in r.negative_prompt.split(", ") for r in calm)
    assert plan.conflicts  # recorded with counts for the warning


def test_records_carry_keys_seeds_and_prompt_words(cars: Path) -> None:
    plan = build_prompts(cars, PromptsConfig(pack="cars", per_image=2, seed=11))
    keys = [r.key for r in plan.records]
    assert len(set(keys)) == len(keys) == 2 * sum(CARS.values())
    for r in plan.records:
        assert r.key == f"{r.source}#{r.k}"
        assert r.seed == derive_seed(11, "generate", r.source, r.k)
        assert r.class_name in r.prompt
        assert r.context in r.prompt
        assert "_" not in r.class_name
    assert {r.class_name for r in plan.records} == {
        "Ram C-V Cargo Van Minivan 2012",
        "AM General Hummer SUV 2000",
        "Chevrolet Corvette Convertible 2012",
    }


def test_budget_per_class_follows_fraction_and_per_image(shared_data: Path) -> None:
    listing = list_images(shared_data / "cub200_25")
    plan = build_prompts(listing, PromptsConfig(pack="birds", fraction=0.3, per_image=2))
    per_class = Counter(r.class_folder for r in plan.records)
    for folder, items in listing.by_class().items():
        assert per_class[folder] == 2 * count_for_fraction(len(items), 0.3)
        assert per_class[folder] == 2 * max(1, int(len(items) * 0.3 + 0.5))


def test_fraction_rounding() -> None:
    assert [count_for_fraction(n, 0.3) for n in (0, 1, 2, 5, 10, 12, 30)] == [0, 1, 1, 2, 3, 4, 9]
    assert count_for_fraction(7, 1.0) == 7


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    # exact halves whose binary float products fall just below .5 (50 * 0.29 == 14.499999999999998)
    [(50, 0.29, 15), (25, 0.58, 15), (45, 0.7, 32), (90, 0.35, 32), (70, 0.15, 11), (1, 0.5, 1), (3, 0.5, 2)],
)
def test_fraction_rounding_is_half_up_on_the_decimal_product(n: int, fraction: float, expected: int) -> None:
    assert count_for_fraction(n, fraction) == expected


def test_selection_is_nested_and_order_free(shared_data: Path) -> None:
    listing = list_images(shared_data / "cub200_25")
    small = {c.source for c in plan_candidates(listing, fraction=0.2, seed=5)}
    large = {c.source for c in plan_candidates(listing, fraction=0.6, seed=5)}
    other_seed = {c.source for c in plan_candidates(listing, fraction=0.2, seed=6)}
    assert small < large
    assert small != other_seed


def test_fixed_contexts_and_class_map(cars: Path, tmp_path: Path) -> None:
    class_map = tmp_path / "names.json"
    class_map.write_text(json.dumps({"AM_General_Hummer_SUV_2000": "Hummer H1"}))
    config = PromptsConfig(
        pack="cars", context="fixed", contexts=("in a studio", "on a race track"), class_map=str(class_map)
    )
    plan = build_prompts(cars, config)
    assert {r.context for r in plan.records} <= {"in a studio", "on a race track"}
    assert len({r.context for r in plan.records}) == 2
    assert "Hummer H1" in {r.class_name for r in plan.records}


def test_a_custom_selector_sees_every_request(cars: Path) -> None:
    # The interface that the CLIP-based `sample` selector will implement: batches in, one scored choice each.
    class Longest:
        def __init__(self) -> None:
            self.seen: list[ContextRequest] = []

        def choose(self, requests: list[ContextRequest]) -> list[ContextChoice]:
            self.seen.extend(requests)
            return [ContextChoice(f"near {r.source.name}", score=0.5) for r in requests]

    selector = Longest()
    plan = build_prompts(cars, PromptsConfig(pack="cars"), selector=selector)
    assert selector.seen == []  # the plan builds its records when they are read
    records = plan.records
    assert [r.key for r in selector.seen] == [r.key for r in records]
    assert all(r.source.is_file() for r in selector.seen)
    assert all(r.context_score == 0.5 and r.prompt.endswith(f"near {Path(r.source).name}") for r in records)


def test_prompts_cli_rejects_bad_values_in_one_line(cars: Path, tmp_path: Path) -> None:
    result = run_cli("prompts", cars, "--per-image", "-1", "-o", tmp_path / "x.jsonl")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["diffcoremix prompts: error: --per-image must be >= 1, got -1"]
    assert not (tmp_path / "x.jsonl").exists()


def test_prompts_cli_config_file_and_flag_precedence(cars: Path, tmp_path: Path) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("prompts:\n  pack: cars\n  per_image: 3\n  seed: 9\n")
    out = tmp_path / "p.jsonl"
    result = run_cli("prompts", cars, "--config", config, "--per-image", "2", "-o", out)
    assert result.returncode == 0, result.stderr
    records = _records(out)
    assert len(records) == 2 * sum(CARS.values())
    assert all(r["seed"] == derive_seed(9, "generate", r["source"], r["k"]) for r in records)
    # The resolved config records the merge, and repeats the run when passed back.
    resolved = out.with_suffix(".config.yaml")
    again = tmp_path / "again.jsonl"
    assert run_cli("prompts", cars, "--config", resolved, "-o", again).returncode == 0
    assert again.read_bytes() == out.read_bytes()


def test_paper_preset_by_name(cars: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    result = run_cli("prompts", cars, "--config", "paper", "--domain", "car", "-o", out)
    assert result.returncode == 0, result.stderr
    # 30% of 3, 2 and 4 images, rounded half up, at least one: 1 + 1 + 1.
    assert len(_records(out)) == 3


def test_a_plan_that_cannot_fit_in_memory_is_refused_at_once_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return run_in_process(capsys, *args)

    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 2})
    tiny = ("--preset", "tiny")
    # 1 KB per candidate where the plan streams; 16 KB where a table of every candidate is held
    cases = (("prompts", (), "3,814.7"), ("generate", tiny, "3,814.7"), ("augment", tiny, "61,035.2"))
    for command, options, gib in cases:
        out = tmp_path / command
        result = run_cli(command, data, "-o", out, *options, "--per-image", "1000000000")
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line
        assert line.startswith(f"diffcoremix {command}: error: --per-image must be at most ")
        assert f"4 images x 1,000,000,000 = 4,000,000,000 candidates would take about {gib} GiB to plan" in line
        assert not out.exists()
    assert run_cli("prompts", data, "-o", tmp_path / "ok.jsonl", "--per-image", "1000").returncode == 0
