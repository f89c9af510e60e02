"""The peers' recipes (issue 28): each registry entry holds what the issue says; ``augment --recipe`` layers a recipe's
settings under ``--config`` and the flags and records its name; ``compare --recipes`` trains each recipe on SYN/<name>
with its own method and p, names the augment command of a missing set in one line, and ``--build`` makes the set;
each recipe's batch, from the set it built, is what its method says (targets that sum to 1, the mixes it makes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffcoremix.data.folder import list_images
from diffcoremix.filter import FilterConfig
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.mix import collate_pairs
from diffcoremix.mix.mixers import KIND_COMBINED, KIND_NONE, KIND_PATCH, KIND_PIXEL, KIND_SUBSTITUTE
from diffcoremix.mix.paired import accepted_images
from diffcoremix.prompts.builder import PromptsConfig
from diffcoremix.recipes import NO_FILTER, RECIPES, Recipe, recipe_configs
from diffcoremix.train import TrainConfig, read_summary
from diffcoremix.train.comparison import run_name
from diffcoremix.train.data import paired_dataset
from diffcoremix.train.loop import _mixer
from diffcoremix.train.transforms import train_transform

from .helpers import make_class_folders, run_in_process

# What the issue (and METHOD.md's "The peers") says of each recipe: counterpart, method, p, strengths, filtered.
EXPECTED: dict[str, tuple[str, str, float | None, tuple[float, ...], bool]] = {
    "diffusemix": ("edit", "diffusemix", None, (), False),
    "diff-mix": ("cross-class", "grr", 0.1, (0.3, 0.5, 0.7, 0.9), False),
    "da-fusion": ("img2img", "lrr", 0.5, (1.0, 0.75, 0.5, 0.25), False),
    "real-guidance": ("img2img", "fc", None, (0.3,), False),
    "diffcoremix": ("text", "diffcoremix", 0.5, (), True),
    "diffcoremix+": ("inpaint", "diffcoremix", 0.5, (), True),
}
TINY = {"generate": {"preset": "tiny", "num_inference_steps": 1}, "filter": {"embedder": "tiny"}}
"""A --config file's sections for tiny, fast sets (the recipes' own settings stay under them)."""


def test_the_registry_holds_the_issues_recipes() -> None:
    assert set(RECIPES.names()) == set(EXPECTED)


@pytest.mark.parametrize("name", RECIPES.names())
def test_each_recipe_is_what_the_issue_says(name: str) -> None:
    recipe = RECIPES.get(name)
    counterpart, method, p, strength, filtered = EXPECTED[name]
    assert (recipe.counterpart, recipe.method, recipe.mix_prob, recipe.strength) == (counterpart, method, p, strength)
    assert recipe.filtered == filtered
    assert "github.com/" in recipe.citation  # cites its paper and repository, says where from
    assert recipe.sources
    generate = recipe.layer("generate")
    assert generate["recipe"] == name
    assert generate["counterpart"] == counterpart
    masks = {"masks": "masks"} if recipe.needs_masks else {}
    GenerateConfig(**{**generate, **masks})  # a valid layer of every stage
    PromptsConfig(**recipe.layer("prompts"))
    kept = FilterConfig(**recipe.layer("filter"))
    if not filtered:  # a peer filters nothing: every cosine is >= -1, so every scored candidate is kept
        assert kept.threshold == NO_FILTER
        assert kept.max_copy_similarity is None
    else:
        assert kept.threshold == FilterConfig().threshold


def test_the_peers_own_numbers() -> None:
    diffusemix, diff_mix = RECIPES.get("diffusemix"), RECIPES.get("diff-mix")
    assert (diffusemix.guidance_scale, diffusemix.pack) == (4.0, "diffusemix")
    assert diffusemix.note is not None
    assert "US12657783B1" in diffusemix.note
    assert (diff_mix.soft_label_gamma, diff_mix.num_inference_steps) == (0.5, 25)
    assert RECIPES.get("diffcoremix+").max_copy_similarity == 0.975
    assert any("our choice" in line for line in RECIPES.get("real-guidance").sources)


@pytest.mark.parametrize("name", RECIPES.names())
def test_each_recipes_method_is_in_the_method_table(name: str) -> None:
    from diffcoremix.train.methods import get_method  # type: ignore[import-not-found,unused-ignore]

    method = get_method(RECIPES.get(name).method)
    assert method.uses_prob == (RECIPES.get(name).mix_prob is not None)


def test_a_plus_in_a_label_gets_its_own_run_folder() -> None:
    assert run_name("recipe:diffcoremix+", 0) != run_name("recipe:diffcoremix", 0)


def test_inpaint_without_masks_is_refused_in_the_recipes_words(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="--recipe diffcoremix\\+: it makes inpaint counterparts"):
        recipe_configs(RECIPES.get("diffcoremix+"))


# --- through the command line, on a tiny dataset ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recipes")
    return make_class_folders(root / "data", {"a": 8, "b": 8, "c": 8}), make_class_folders(
        root / "test", {"a": 3, "b": 3, "c": 3}
    )


def _config_file(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def _resolved(out: Path, name: str = "config.yaml") -> dict[str, dict[str, object]]:
    document: dict[str, dict[str, object]] = yaml.safe_load((out / name).read_text())
    return document


def test_augment_recipe_under_config_under_flags(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = tiny
    # diff-mix (named by the file) sets cross-class, strengths, gamma 0.5, 25 steps and no filter; the file sets gamma
    # and 8 steps; a flag sets 4 steps.
    config = _config_file(tmp_path / "c.yaml", {"generate": {"recipe": "diff-mix", "preset": "tiny",
                                                              "soft_label_gamma": 1.0, "num_inference_steps": 8},
                                                 "filter": {"embedder": "tiny"}})  # fmt: skip
    out = tmp_path / "out"
    done = run_in_process(capsys, "augment", data, "-o", out, "--config", config, "--num-inference-steps", "4",
                          "--classes", "a,b", "--max-per-class", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    generate = _resolved(out)["generate"]
    assert generate["recipe"] == "diff-mix"  # recorded
    assert (generate["counterpart"], generate["strength"]) == ("cross-class", [0.3, 0.5, 0.7, 0.9])  # recipe > default
    assert generate["soft_label_gamma"] == 1.0  # file > recipe
    assert generate["num_inference_steps"] == 4  # flag > file > recipe
    assert _resolved(out, "filter.config.yaml")["filter"]["threshold"] == NO_FILTER  # recipe > default
    assert "2 accepted of a budget of 2" in done.stdout  # no filter: both kept


def _augment(capsys: pytest.CaptureFixture[str], data: Path, out: Path, recipe: str, *extra: str) -> None:
    tiny = ("--preset", "tiny", "--num-inference-steps", "1", "--embedder", "tiny", "--max-per-class", "2")
    done = run_in_process(capsys, "augment", data, "-o", out, "--recipe", recipe, *tiny, *extra)
    assert done.returncode == 0, done.stderr


def _compare(
    capsys: pytest.CaptureFixture[str], data: Path, test: Path, syn: Path, out: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return run_in_process(capsys, "compare", data, "--synthetic", syn, "--test", test, "--max-steps", "3", "-b", "8",
                          "-o", out, *extra)  # fmt: skip


def test_augment_then_compare_trains_the_recipe_on_its_set(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, test = tiny
    syn = tmp_path / "syn"
    _augment(capsys, data, syn / "diffcoremix", "diffcoremix", "--threshold", "-1")
    out = tmp_path / "cmp"
    done = _compare(capsys, data, test, syn, out, "--recipes", "diffcoremix", "--methods", "none", "--mix-prob", "0.2")
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ")[0][2:] for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[1:] == ["none", "recipe:diffcoremix"]
    run = out / "runs" / "recipe-diffcoremix-seed0"
    trained = _resolved(run)["train"]
    assert (trained["method"], trained["mix_prob"]) == ("diffcoremix", 0.5)  # the recipe's p, not --mix-prob's
    settings = json.loads((run / "settings.json").read_text())
    assert settings["synthetic"] == str((syn / "diffcoremix").resolve())  # its own set: SYN/<recipe>
    assert read_summary(run)["steps"] == 3


def test_a_missing_or_unfinished_set_names_the_command_that_makes_it(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, test = tiny
    syn, out = tmp_path / "syn", tmp_path / "cmp"
    done = _compare(capsys, data, test, syn, out, "--recipes", "diffcoremix", "--classes", "a,b")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    command = f"diffcoremix augment {data} -o {syn / 'diffcoremix'} --recipe diffcoremix --classes a,b"
    assert f"`{command}`" in lines[0]
    assert "does not exist" in lines[0]
    assert not out.exists()  # before any run

    # generated but not filtered (generate --recipe): unfinished, the same one line
    done_gen = run_in_process(capsys, "generate", data, "-o", syn / "diffcoremix", "--recipe", "diffcoremix",
                              "--preset", "tiny", "--num-inference-steps", "1", "--max-per-class", "1")  # fmt: skip
    assert done_gen.returncode == 0, done_gen.stderr
    done = _compare(capsys, data, test, syn, out, "--recipes", "diffcoremix")
    assert done.returncode == 2
    assert "has not been filtered" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

    # another recipe's set in its place is refused, not rebuilt over (--build leaves it alone)
    shutil.copytree(syn / "diffcoremix", syn / "da-fusion")
    done = _compare(capsys, data, test, syn, out, "--recipes", "da-fusion", "--build")
    assert done.returncode == 2
    assert "was made by recipe diffcoremix, not da-fusion" in done.stderr
    assert not out.exists()


def test_build_makes_the_set_then_trains_and_a_rerun_resumes(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, test = tiny
    # the shared file names another recipe: each set is still named by its own
    generate = {**TINY["generate"], "recipe": "diff-mix"}
    config = _config_file(tmp_path / "tiny.yaml", {**TINY, "generate": generate, "prompts": {"fraction": 0.25}})
    syn, out = tmp_path / "syn", tmp_path / "cmp"
    args = ("--recipes", "diffcoremix", "--config", config, "--build")
    done = _compare(capsys, data, test, syn, out, *args)
    assert done.returncode == 0, done.stderr
    assert _resolved(syn / "diffcoremix")["generate"]["recipe"] == "diffcoremix"
    assert (syn / "diffcoremix" / "filter.jsonl").is_file()
    models = sorted((out / "runs").glob("*/model.pt"))
    assert [p.parent.name for p in models] == ["none-seed0", "recipe-diffcoremix-seed0"]
    before = {p: p.stat().st_mtime_ns for p in [*models, *(syn / "diffcoremix").rglob("*.png")]}
    again = _compare(capsys, data, test, syn, out, *args)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing regenerated, nothing retrained


def test_an_unknown_recipe_lists_the_known_ones(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, test = tiny
    known = "known: " + ", ".join(RECIPES.names())
    done = run_in_process(capsys, "augment", data, "-o", tmp_path / "out", "--recipe", "nope", "--preset", "tiny")
    assert done.returncode == 2
    assert f"unknown recipe 'nope'; {known}" in done.stderr
    done = _compare(capsys, data, test, tmp_path / "syn", tmp_path / "cmp", "--recipes", "diffcoremix,nope")
    assert done.returncode == 2
    assert f"unknown recipe 'nope'; {known}" in done.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cmp").exists()


def test_the_listing_shows_every_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    done = run_in_process(capsys, "presets")
    assert done.returncode == 0
    for name in RECIPES.names():
        recipe: Recipe = RECIPES.get(name)
        assert f"  {name} " in done.stdout
        assert recipe.citation in done.stdout
        assert f"counterpart {recipe.counterpart}; method {recipe.method}" in done.stdout
    assert "US12657783B1" in done.stdout


def _subject_masks(data: Path, folder: Path) -> Path:
    """A subject mask per image of DATA (its left half), at the same relative path."""
    for image in data.rglob("*.png"):
        side = Image.open(image).size[0]
        mask = np.zeros((side, side), np.uint8)
        mask[:, : side // 2] = 255
        (folder / image.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(folder / image.parent.name / image.name)
    return folder


@pytest.mark.parametrize("name", RECIPES.names())
def test_every_recipe_builds_and_trains(
    name: str, tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``compare --recipes NAME --build`` makes the recipe's set with the recipe's settings and trains its method."""
    data, test = tiny
    generate = {**TINY["generate"], "num_inference_steps": 4}  # int(4 x 0.25) >= 1: every recipe's strengths
    if RECIPES.get(name).needs_masks:
        generate["masks"] = str(_subject_masks(data, tmp_path / "masks"))
    config = _config_file(tmp_path / "tiny.yaml", {**TINY, "generate": generate, "prompts": {"fraction": 0.25}})
    done = _compare(capsys, data, test, tmp_path / "syn", tmp_path / "cmp", "--recipes", name, "--config", config,
                    "--build")  # fmt: skip
    assert done.returncode == 0, done.stderr
    trained = _resolved(tmp_path / "cmp" / "runs" / run_name(RECIPES.get(name).label, 0))["train"]
    assert trained["method"] == RECIPES.get(name).method
    _check_batch(RECIPES.get(name), data, tmp_path / "syn" / name)


KINDS = {"fc": {KIND_NONE}, "lrr": {KIND_SUBSTITUTE}, "grr": {KIND_SUBSTITUTE}, "diffusemix": {KIND_COMBINED},
         "diffcoremix": {KIND_PIXEL, KIND_PATCH}}  # fmt: skip
"""What a partnered sample becomes under each recipe's method at p = 1 (fc: nothing; it has no partners)."""


def _check_batch(recipe: Recipe, data: Path, synthetic: Path) -> None:
    """The whole set as one batch through ``train``'s dataset and mixer, p = 1: every partnered sample is what the
    method makes of it, the others pass through, and every target is a distribution (soft labels sum to 1)."""
    config = TrainConfig(method=recipe.method, mix_prob=1.0)
    transform = train_transform(config.transform, config.img_size, config.mean, config.std)
    dataset = paired_dataset(list_images(data), config, synthetic, transform, set())
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    mixed = _mixer(config, len(dataset.classes), soft=dataset.has_soft_labels)(
        **batch, generator=torch.Generator().manual_seed(0)
    )
    partnered = batch["has_partner"]
    assert set(mixed.kind[partnered].tolist()) <= KINDS[recipe.method]
    assert set(mixed.kind[~partnered].tolist()) <= {KIND_NONE}
    kept = len(accepted_images(synthetic))  # diffcoremix+'s filter may keep none of the tiny model's images
    assert bool(partnered.any()) == (recipe.method != "fc" and kept > 0)
    if mixed.targets.ndim == 2:
        assert bool((mixed.targets >= 0).all())
        assert torch.allclose(mixed.targets.sum(dim=1), torch.ones(len(dataset)), atol=1e-6)
    if recipe.method == "grr":  # Diff-Mix's cross-class images carry their soft labels into the batch
        assert dataset.soft
        assert any(float(t.max()) < 1 for t in dataset.soft.values())
