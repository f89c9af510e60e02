"""Stage configs: validation messages, YAML layering, shipped presets, and the resolved record of a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from diffcoremix import (
    ConfigError,
    DataConfig,
    FilterConfig,
    GenerateConfig,
    PromptsConfig,
    ScanConfig,
    UnknownNameError,
)
from diffcoremix.atomic import atomic_write_text
from diffcoremix.cluster.config import ExecutorConfig
from diffcoremix.config import (
    PRESET_DIR,
    build_config,
    field_docs,
    load_config_file,
    resolve_preset,
    to_plain,
    write_resolved_config,
)
from diffcoremix.train.config import TrainConfig

STAGES = {
    "data": DataConfig,
    "scan": ScanConfig,
    "prompts": PromptsConfig,
    "generate": GenerateConfig,
    "filter": FilterConfig,
    "train": TrainConfig,
    "executor": ExecutorConfig,
}
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@pytest.mark.parametrize("cls", STAGES.values(), ids=STAGES.keys())
def test_every_field_is_documented(cls: type) -> None:
    docs = field_docs(cls)
    assert {f.name for f in dataclasses.fields(cls)} == set(docs)
    assert all(len(d) > 10 for d in docs.values())


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PromptsConfig().seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_image": -1}, "per_image must be >= 1, got -1"),
        ({"fraction": 0.0}, "fraction must be in (0, 1], got 0.0"),
        ({"fraction": 1.5}, "fraction must be in (0, 1], got 1.5"),
        ({"seed": -3}, "seed must be >= 0, got -3"),
        ({"per_image": "2"}, "per_image must be an integer, got '2'"),
        ({"per_image": True}, "per_image must be an integer, got True"),
        ({"context": "nope"}, "context must be one of fixed, random, sample, got 'nope'"),
        ({"context": "fixed"}, "contexts must be at least one context with context=fixed, got ()"),
        ({"contexts": ("x",)}, "contexts must be empty unless context=fixed, got ('x',)"),
        ({"domain": "  "}, "domain must be a non-empty word, got '  '"),
    ],
)
def test_prompts_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PromptsConfig(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_scan_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="min_side must be >= 1, got 0"):
        ScanConfig(min_side=0)
    with pytest.raises(ConfigError, match="max_pixels must be an integer"):
        ScanConfig(max_pixels=1.5)  # type: ignore[arg-type]


def test_coercion_of_yaml_values() -> None:
    config = build_config(PromptsConfig, {"fraction": 1, "context": "fixed", "contexts": ["a", "b"]})
    assert config.fraction == 1.0
    assert isinstance(config.fraction, float)
    assert config.contexts == ("a", "b")


def test_layers_later_wins_and_dashes_accepted() -> None:
    config = build_config(PromptsConfig, {"per_image": 2, "seed": 5}, {"per-image": 3})
    assert (config.per_image, config.seed) == (3, 5)


def test_unknown_key_is_an_error_listing_known_options() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_config(PromptsConfig, {"per_imag": 2}, section="prompts")
    assert "unknown prompts option 'per_imag'" in str(info.value)
    assert "per_image" in str(info.value)


def test_flat_and_sectioned_files(tmp_path: Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text("fraction: 0.5\n")
    assert load_config_file(flat, "prompts") == {"fraction": 0.5}
    sectioned = tmp_path / "sectioned.yaml"
    sectioned.write_text("prompts:\n  fraction: 0.25\nscan:\n  min_side: 8\n")
    assert load_config_file(sectioned, "prompts") == {"fraction": 0.25}
    assert load_config_file(sectioned, "scan") == {"min_side": 8}
    assert load_config_file(sectioned, "generate") == {}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config_file(empty, "prompts") == {}


def test_bad_files_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preset name"):
        load_config_file(tmp_path / "missing.yaml", "prompts")
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="a readable YAML file"):
        load_config_file(broken, "prompts")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a YAML mapping"):
        load_config_file(listy, "prompts")


def test_presets_exist() -> None:
    assert {"default", "paper"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_builds_every_stage(preset: str) -> None:
    data = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    assert set(data) <= set(STAGES), f"preset {preset} has sections for unknown stages"
    for section, cls in STAGES.items():
        config = build_config(cls, load_config_file(preset, section), section=section)
        assert isinstance(config, cls)


def test_default_preset_matches_the_dataclass_defaults() -> None:
    for section, cls in STAGES.items():
        values = load_config_file("default", section)
        assert build_config(cls, values) == cls(), f"configs/default.yaml drifted from {cls.__name__}"


def test_paper_preset_is_the_reference_budget() -> None:
    config = build_config(PromptsConfig, load_config_file("paper", "prompts"))
    assert (config.pack, config.fraction, config.per_image, config.context) == ("paper", 0.3, 1, "random")


def test_repository_configs_link_points_at_the_presets() -> None:
    link = Path(__file__).resolve().parents[1] / "configs"
    assert sorted(p.stem for p in link.glob("*.yaml")) == PRESETS


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = PromptsConfig(pack="paper", domain="car", fraction=0.3, per_image=2, seed=7)
    path = write_resolved_config(tmp_path / "run" / "config.yaml", {"prompts": config}, data=Path("x/y"))
    text = path.read_text()
    assert "# diffcoremix_version: " in text
    assert "# data: x/y" in text
    assert build_config(PromptsConfig, load_config_file(path, "prompts")) == config
    assert to_plain(config)["contexts"] == []


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_option_help_names_every_registered_choice() -> None:
    # The help of an option whose values come from a registry must not drift from it (the review found
    # --preset and --embedder lists that had).
    from diffcoremix.config import field_docs
    from diffcoremix.embedders import EMBEDDERS
    from diffcoremix.filter import REFERENCE_RULES
    from diffcoremix.generate import GENERATOR_PRESETS
    from diffcoremix.prompts import CONTEXT_SELECTORS

    for cls, name, registry in (
        (GenerateConfig, "preset", GENERATOR_PRESETS),
        (FilterConfig, "embedder", EMBEDDERS),
        (FilterConfig, "reference", REFERENCE_RULES),
        (PromptsConfig, "context", CONTEXT_SELECTORS),
    ):
        words = set(field_docs(cls)[name].replace(",", " ").replace("(", " ").replace(":", " ").split())
        missing = [n for n in registry.names() if n not in words]
        assert not missing, f"the help of {cls.__name__}.{name} does not name {missing}"


def test_a_preset_name_is_found_beside_a_folder_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cifar").mkdir()  # e.g. the output folder of an earlier `compare -o cifar`
    monkeypatch.chdir(tmp_path)
    assert resolve_preset("cifar") == PRESET_DIR / "cifar.yaml"
    (tmp_path / "mine.yaml").write_text("train: {lr: 0.5}\n")
    assert resolve_preset("mine.yaml") == Path("mine.yaml")
