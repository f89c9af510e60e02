"""One ``--config`` file serves every stage: each command checks the option names of every section in it, not only
of the sections it reads, so ``filter`` names a misspelt key of the ``generate:`` section as ``generate`` does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from diffcoremix.cli.main import build_parser, main
from diffcoremix.cli.options import config_sections
from diffcoremix.config import PRESET_DIR, check_config_sections
from diffcoremix.errors import UnknownNameError


def _commands_with_config() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if "--config" in p._option_string_actions}


def _argv(name: str, parser: argparse.ArgumentParser, tmp: Path, config: Path) -> list[str]:
    """The command with a placeholder for each required argument: the file is refused before they are read."""
    argv = [name]
    for action in parser._actions:
        if action.required and not action.option_strings:
            argv.append(str(tmp / action.dest))
        elif action.required:
            argv += [action.option_strings[-1], "none" if action.dest == "methods" else str(tmp / action.dest)]
    return [*argv, "--config", str(config)]


def test_every_command_with_config_is_covered() -> None:
    assert {"scan", "prompts", "generate", "filter", "augment", "train", "finetune"} <= set(_commands_with_config())


@pytest.mark.parametrize("command", sorted(_commands_with_config()))
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("generate:\n  num_inference_stepz: 2\n", "unknown generate option 'num_inference_stepz'; known: batch_size"),
        ("filter:\n  treshold: 0.5\n", "unknown filter option 'treshold'; known: "),
        ("train:\n  epochz: 2\n", "unknown train option 'epochz'; known: "),
        ("filter:\n  threshold: 0.5\nfiltre:\n  threshold: 0.5\n", "unknown config section (in "),
    ],
    ids=["generate-key", "filter-key", "train-key", "unknown-section"],
)
def test_an_unknown_key_in_any_section_is_named_by_every_command(
    command: str, text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(_argv(command, _commands_with_config()[command], tmp_path, config)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffcoremix {command}: error: {message}"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_the_shipped_presets_pass_the_check(preset: str) -> None:
    check_config_sections(preset, config_sections())


def test_a_flat_file_is_checked_by_the_command_that_reads_it_only(tmp_path: Path) -> None:
    config = tmp_path / "flat.yaml"
    config.write_text("threshold: 0.5\n")  # flat: every key belongs to the running command's section
    check_config_sections(config, config_sections())
    config.write_text("filter:\n  treshold: 0.5\n")
    with pytest.raises(UnknownNameError, match="'treshold'"):
        check_config_sections(config, config_sections())
