"""Devices and toolchains this machine lacks: ``--device cuda`` without a GPU, ``cuda:N`` past the count, ``mps``
off Apple silicon, ``--compile`` without a C++ compiler. Each is one line on stderr and exit 2, before any work."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from diffcoremix.cli.main import build_parser, main
from diffcoremix.devices import resolve_device
from diffcoremix.errors import DeviceError
from tests.helpers import make_class_folders, run_cli

MISSING_DEVICES = [
    pytest.param("cuda", "no CUDA GPU is visible", id="cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")),
    pytest.param(f"cuda:{torch.cuda.device_count()}", "CUDA GPU", id="cuda-index-past-the-count"),
    pytest.param("mps", "MPS (Apple GPU) is not available", id="mps",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    pytest.param("gpu", "not a device name", id="not-a-device"),
]  # fmt: skip


def _commands_with_device() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand whose parser has ``--device``: a command that gains the option is tested at once."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if "--device" in p._option_string_actions}


def _minimal_argv(name: str, parser: argparse.ArgumentParser, tmp: Path) -> list[str]:
    """The command with a placeholder for each required argument (the device must be refused before they are
    read: none of them exists)."""
    argv = [name]
    for action in parser._actions:
        if action.required and not action.option_strings:
            argv.append(str(tmp / action.dest))
        elif action.required:
            argv += [action.option_strings[-1], str(tmp / action.dest)]
    return argv


def test_the_commands_with_device_are_the_model_commands() -> None:
    assert {"generate", "filter", "augment", "judge", "train", "eval", "finetune", "compare"} <= set(
        _commands_with_device()
    )


@pytest.mark.parametrize("command", sorted(_commands_with_device()))
@pytest.mark.parametrize(("device", "says"), MISSING_DEVICES)
def test_a_missing_device_is_one_line_and_exit_2(
    command: str, device: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*_minimal_argv(command, _commands_with_device()[command], tmp_path), "--device", device]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"diffcoremix {command}: error: --device {device}: {err.split(': ', 3)[3]}"
    assert says in err
    assert err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(("device", "says"), MISSING_DEVICES)
def test_the_library_refuses_a_missing_device(device: str, says: str) -> None:
    with pytest.raises(DeviceError, match=re.escape(says)):
        resolve_device(device)
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_device_from_a_config_file_is_refused_by_the_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_class_folders(tmp_path / "data", {"a": 1}, size=32)
    config = tmp_path / "c.yaml"
    config.write_text("generate:\n  device: cuda\n")
    assert main(["generate", str(data), "-o", str(tmp_path / "out"), "--preset", "tiny", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        "diffcoremix generate: error: --device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); "
        "use --device cpu\n"
    )


def _no_compiler_env(tmp_path: Path) -> dict[str, str]:
    """PATH with only the venv's scripts and an empty folder: no g++, c++ or clang++; CXX unset."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC")}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{empty}"}


def test_torchcompile_without_a_cpp_compiler_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2}, size=32)
    args = ("--torchcompile", "--device", "cpu", "--batch-size", "2", "--max-steps", "1")
    result = run_cli("train", data, "-o", tmp_path / "out", *args, env=_no_compiler_env(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "diffcoremix train: error: --torchcompile needs a C++ compiler for torch.compile on CPU (none found: "
        "install g++ or drop --torchcompile)\n"
    )
    assert not (tmp_path / "out").exists()  # refused before the run began


@pytest.fixture
def no_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process without a C++ compiler (:func:`_no_compiler_env`), inductor's memo of the one it found cleared."""
    from torch._inductor.cpp_builder import cpp_compiler_search

    for name, value in _no_compiler_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CXX", raising=False)
    cpp_compiler_search.cache_clear()
    yield
    cpp_compiler_search.cache_clear()  # the compiler of the machine again, for the next test


@pytest.mark.usefixtures("no_compiler")
def test_generate_compile_without_a_cpp_compiler_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_class_folders(tmp_path / "data", {"a": 1}, size=32)
    argv = ["generate", str(data), "-o", str(tmp_path / "out"), "--preset", "tiny", "--compile", "--device", "cpu"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "diffcoremix generate: error: --compile needs a C++ compiler for torch.compile on CPU (none found: "
        "install g++ or drop --compile)\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_compiler")
def test_the_training_library_refuses_torchcompile_without_a_compiler(tmp_path: Path) -> None:
    # The one check of train (the command line has none of its own): the message names the option as the library
    # spells it, the command line as its flag (the test above).
    from diffcoremix import ToolchainError
    from diffcoremix.train import TrainConfig, train

    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2}, size=32)
    with pytest.raises(ToolchainError, match=r"^torchcompile needs a C\+\+ compiler for torch\.compile on CPU \("):
        train(data, config=TrainConfig(torchcompile=True, device="cpu", max_steps=1), output=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run began


@pytest.mark.usefixtures("no_compiler")
def test_compare_refuses_torchcompile_without_a_compiler_before_its_first_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # train would refuse it too, but only once compare had decoded DATA and claimed its folder for the first run.
    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2}, size=32)
    args = ["--methods", "none", "--test", str(data), "--torchcompile", "--device", "cpu", "--max-steps", "1"]
    assert main(["compare", str(data), "-o", str(tmp_path / "cmp"), *args]) == 2
    assert capsys.readouterr().err == (
        "diffcoremix compare: error: --torchcompile needs a C++ compiler for torch.compile on CPU (none found: "
        "install g++ or drop --torchcompile)\n"
    )
    assert not (tmp_path / "cmp").exists()
