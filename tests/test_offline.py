"""Without network access: hub models fail at once, in one line naming the way out; cached ones still load.

"No network" is made the same on every machine: ``HF_ENDPOINT`` points at a closed local port (nothing listens
on the discard port 9) and the hub cache is an empty temporary folder. ``HF_HUB_OFFLINE`` is cleared, so the
tool has to find out by itself. Every run goes through the real command line in a subprocess. "At once" is shown
by what the run does, not by a clock: it opens one connection (the probe of the hub) and sends no request, so no
retry and no back-off can hold it (how many seconds that takes here: ``benchmarks/offline.py``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import make_class_folders, run_cli, save_tiny_hf_clip

CLOSED_ENDPOINT = "http://127.0.0.1:9"
PROBE = ("127.0.0.1", 9)
"""The one connection an offline run opens: the hub probe's (:func:`diffcoremix.hub.offline_reason`)."""
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NETWORK_TRACE = re.compile(r"Request [\w-]+: [A-Z]+ http|thrown while requesting|Retrying in|ConnectError")
"""A connection attempt, as shown by huggingface_hub's debug log of each request it sends (``HF_DEBUG=1``), its
retry warnings (``-v``) or a failure's traceback (``--debug``). A request that its offline mode blocked is
neither logged nor a ConnectError (it raises OfflineModeIsEnabled)."""


def network_traces(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The stderr lines of ``result`` that show an attempt to reach the hub."""
    return [line for line in result.stderr.splitlines() if NETWORK_TRACE.search(line)]


def offline_env(cache: Path) -> dict[str, str]:
    """Environment of a run with no reachable hub and ``cache`` as the (empty) hub cache."""
    return {
        "HF_ENDPOINT": CLOSED_ENDPOINT,
        "HF_HOME": str(cache),
        "HF_HUB_CACHE": str(cache / "hub"),
        "HF_HUB_OFFLINE": "",  # whatever the machine sets: the tool must notice by itself
        "TRANSFORMERS_OFFLINE": "",
        "NO_PROXY": "127.0.0.1",  # a proxy set on the machine must not stand between us and the closed port
        "no_proxy": "127.0.0.1",
        "PYTHONWARNINGS": "default",  # run_cli ignores warnings; these tests check that the CLI hides them
    }


def watched_env(cache: Path) -> dict[str, str]:
    """:func:`offline_env`, with huggingface_hub logging every request it sends (see :data:`NETWORK_TRACE`)."""
    return {**offline_env(cache), "HF_DEBUG": "1"}


_WATCH_CONNECTIONS = """
import socket, sys
def watch(event, args):
    if event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6):
        with open(sys.argv[1], "a", encoding="utf-8") as log:
            log.write(repr(tuple(args[1][:2])) + "\\n")
sys.addaudithook(watch)
from diffcoremix.cli.main import main
sys.exit(main(sys.argv[2:]))
"""
"""The command line, with every TCP connection it opens (any thread) written to the file ``argv[1]``."""


def watched_cli(
    *args: str | os.PathLike[str], env: dict[str, str], log: Path
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, int]]]:
    """:func:`run_cli` (its 300 s timeout is the guard against a hang), and the (host, port) of every connection the
    run opened, in order, seen by an audit hook on ``socket.connect``."""
    command = [sys.executable, "-c", _WATCH_CONNECTIONS, log, *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", **env}
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, timeout=300, check=False)
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return result, [ast.literal_eval(line) for line in lines]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed with exit code 2."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def hub_snapshot(cache: Path, repo_id: str) -> Path:
    """The folder of ``repo_id``'s files at :data:`COMMIT`, in a hub cache laid out as huggingface_hub writes it."""
    repo = cache / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("data"), {"001.cat": 2, "002.dog": 2})


Failed = tuple[subprocess.CompletedProcess[str], list[tuple[str, int]], Path]


@pytest.fixture(scope="module")
def failed_generate(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Failed:
    """``generate DATA -o OUT`` with the default preset (sd15, a hub model), offline: result, connections, OUT."""
    root = tmp_path_factory.mktemp("failed")
    out = root / "out"
    result, connections = watched_cli("generate", data, "-o", out, env=offline_env(root / "hf"), log=root / "log")
    return result, connections, out


def test_default_preset_fails_at_once_in_one_line(failed_generate: Failed) -> None:
    result, connections, _ = failed_generate
    assert connections == [PROBE]  # the probe, then nothing: no request, no retry
    line = one_line(result)
    assert "error: cannot load model 'stable-diffusion-v1-5/stable-diffusion-v1-5' (" in line
    assert f"the hub {CLOSED_ENDPOINT} cannot be reached" in line
    assert "--preset tiny" in line
    assert "--model PATH" in line


def test_after_a_failed_offline_run_the_tiny_preset_runs_in_the_same_out(
    data: Path, failed_generate: Failed, tmp_path: Path
) -> None:
    # Needs the runner not to claim OUT before the first candidate exists (a failed load leaves nothing behind).
    _, _, out = failed_generate
    result = run_cli("generate", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1",
                     env=offline_env(tmp_path / "hf"))  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_an_offline_finetune_of_the_default_preset_fails_in_one_line_and_leaves_model_unclaimed(
    data: Path, tmp_path: Path
) -> None:
    model, env = tmp_path / "model", offline_env(tmp_path / "hf")
    result, connections = watched_cli("finetune", data, "-o", model, env=env, log=tmp_path / "log")
    assert connections == [PROBE]
    line = one_line(result)
    assert "cannot load model 'stable-diffusion-v1-5/stable-diffusion-v1-5' (" in line
    assert "--preset tiny" in line
    assert not model.exists()


def test_default_embedder_fails_at_once_in_one_line(data: Path, tmp_path: Path) -> None:
    env = offline_env(tmp_path / "hf")
    out = tmp_path / "out"
    made = run_cli("generate", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1", env=env)
    assert made.returncode == 0, made.stderr
    result, connections = watched_cli("filter", out, "--embedder", "open_clip:ViT-B-32:openai", env=env,
                                      log=tmp_path / "log")  # fmt: skip
    assert connections == [PROBE]
    line = one_line(result)
    assert "cannot load open_clip model 'ViT-B-32' with weights 'openai'" in line
    assert f"the hub {CLOSED_ENDPOINT} cannot be reached" in line
    assert "--embedder tiny" in line
    assert "--embedder open_clip:ViT-B-32:/path/to/" in line


def test_context_embedder_failure_names_the_context_option(data: Path, tmp_path: Path) -> None:
    args = ("prompts", data, "-o", tmp_path / "p.jsonl", "--context", "sample")
    result, connections = watched_cli(*args, env=offline_env(tmp_path / "hf"), log=tmp_path / "log")
    assert connections == [PROBE]
    line = one_line(result)
    assert "--context-embedder tiny" in line
    assert "--context-embedder open_clip:ViT-B-32:/path/to/" in line
    assert "--embedder" not in line  # "--context-embedder" does not contain it


def test_verbose_shows_the_libraries_records(data: Path, tmp_path: Path) -> None:
    # The same failure as the default-preset test (one line there): -v adds our progress and the libraries' own.
    result = run_cli("generate", data, "-o", tmp_path / "out", "-v", env=watched_env(tmp_path / "hf"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) > 1
    assert lines[-1].startswith("diffcoremix generate: error: cannot load model")
    assert any(line.startswith("diffcoremix: INFO: ") and "cannot be reached" in line for line in lines)
    assert any(line.startswith("py.warnings: WARNING: ") for line in lines), result.stderr  # a library's warning
    assert not network_traces(result), result.stderr


def test_root_logger_records_appear_only_with_verbose(data: Path, tmp_path: Path) -> None:
    # open_clip reports a missing weights file with logging.error() on the root logger (which, while the root has
    # no handler, also calls basicConfig): a local path, so no hub and no probe are involved.
    missing = tmp_path / "no-such-weights.bin"
    args = ("prompts", data, "-o", tmp_path / "p.jsonl", "--context", "sample", "--context-embedder",
            f"open_clip:ViT-B-32:{missing}")  # fmt: skip
    line = one_line(run_cli(*args, env=offline_env(tmp_path / "hf")))
    assert f"cannot load open_clip model 'ViT-B-32' with weights '{missing}'" in line
    assert "--context-embedder tiny" in line
    verbose = run_cli(*args, "-v", env=offline_env(tmp_path / "hf"))
    assert verbose.returncode == 2, verbose.stderr
    assert any(line.startswith("root: ERROR: ") for line in verbose.stderr.splitlines()), verbose.stderr


@pytest.mark.slow  # heavy: builds and saves a full checkpoint: make test-all
def test_a_checkpoint_without_local_configs_fails_at_once_naming_model_config(data: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    # from_single_file takes the pipeline's configs from the hub (here those of SD 1.5, its guess for a file it
    # does not recognise) before it reads any weight, and downloads them even when told local_files_only.
    checkpoint = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, checkpoint)
    args = ("generate", data, "-o", tmp_path / "out", "--model", checkpoint)
    line = one_line(run_cli(*args, env=offline_env(tmp_path / "hf")))  # diffusers' own warning stays hidden
    assert f"cannot load model '{checkpoint}' (the hub {CLOSED_ENDPOINT} cannot be reached" in line
    assert "--model-config FOLDER" in line
    verbose = run_cli(*args, "-v", "--debug", env=watched_env(tmp_path / "hf"))
    assert verbose.returncode == 2, verbose.stderr
    assert not network_traces(verbose), verbose.stderr


def test_a_cached_diffusers_model_loads_offline_without_a_request(data: Path, tmp_path: Path) -> None:
    from diffcoremix.generate.tiny import tiny_sd_pipeline

    tiny_sd_pipeline(0).save_pretrained(hub_snapshot(tmp_path / "hf", "diffcoremix-test/tiny-sd"))
    out = tmp_path / "out"
    args = ("--preset", "tiny", "--model", "diffcoremix-test/tiny-sd", "--num-inference-steps", "1", "-v")
    result = run_cli("generate", data, "-o", out, *args, env=watched_env(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert not network_traces(result), result.stderr
    from diffcoremix.generate import read_manifest

    assert set(read_manifest(out).model_revision) == {COMMIT}  # the cached snapshot's commit, read offline


def test_a_cached_transformers_clip_loads_offline_without_a_request(data: Path, tmp_path: Path) -> None:
    folder = hub_snapshot(tmp_path / "hf", "diffcoremix-test/tiny-clip")
    save_tiny_hf_clip(folder)
    result = run_cli("prompts", data, "-o", tmp_path / "p.jsonl", "--context", "sample", "--context-embedder",
                     "hf:diffcoremix-test/tiny-clip", "-v", env=watched_env(tmp_path / "hf"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not network_traces(result), result.stderr
    assert (tmp_path / "p.jsonl").read_text().count("\n") == 4


# open_clip takes its pretrained tags from a table of its own: this script adds a tiny model and a tag whose
# weights live on the hub (as ViT-B-32's "openai" does), then runs the command line.
_TINY_OPEN_CLIP_CLI = """
import sys
import open_clip
from open_clip.pretrained import _PRETRAINED, _pcfg
open_clip.add_model_config(sys.argv[1])
_PRETRAINED["diffcoremix-tiny"] = {"seed0": _pcfg(hf_hub="diffcoremix-test/tiny-open-clip/")}
from diffcoremix.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_cached_open_clip_tag_loads_offline_without_a_request(data: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from diffcoremix.embedders.models import tiny_open_clip

    # tiny_open_clip's architecture, as an open_clip model config
    config = {"embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "head_width": 16, "patch_size": 8,
              "image_size": 64}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4,
              "layers": 2}}  # fmt: skip
    (tmp_path / "diffcoremix-tiny.json").write_text(json.dumps(config))
    folder = hub_snapshot(tmp_path / "hf", "diffcoremix-test/tiny-open-clip")
    folder.mkdir(parents=True)
    save_file(tiny_open_clip(0).module.state_dict(), folder / "open_clip_model.safetensors")
    args = ["prompts", data, "-o", tmp_path / "p.jsonl", "--context", "sample", "--context-embedder",
            "open_clip:diffcoremix-tiny:seed0", "-v"]  # fmt: skip
    command = [sys.executable, "-c", _TINY_OPEN_CLIP_CLI, tmp_path / "diffcoremix-tiny.json", *args]
    env = {**os.environ, **watched_env(tmp_path / "hf")}
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert not network_traces(result), result.stderr
    assert (tmp_path / "p.jsonl").read_text().count("\n") == 4


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh hub probe in this process, with no offline flag and no proxy from the machine."""
    from diffcoremix import hub

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for scheme in ("http", "https", "all"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    hub.offline_reason.cache_clear()
    yield
    hub.offline_reason.cache_clear()  # later tests in this process probe for themselves


def test_the_probe_tells_a_listening_hub_from_a_closed_port(probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffcoremix import hub

    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert not hub.hub_offline()
        assert not hub.hub_offline()
        server.settimeout(1.0)
        server.accept()[0].close()
        with pytest.raises(TimeoutError):  # asked once per process: one connection for both questions
            server.accept()
    hub.offline_reason.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    assert hub.offline_reason() == f"the hub {CLOSED_ENDPOINT} cannot be reached: Connection refused"
    assert hub.hub_offline()


def test_the_offline_flags_need_no_probe(probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffcoremix import hub

    with socket.create_server(("127.0.0.1", 0)) as server:  # reachable, yet the flag wins
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
        assert hub.offline_reason() == "TRANSFORMERS_OFFLINE is set"


def test_behind_a_proxy_the_probe_asks_the_proxy(probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffcoremix import hub

    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # never resolves: only the proxy can reach it
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert not hub.hub_offline()
    hub.offline_reason.cache_clear()
    monkeypatch.setenv("HTTPS_PROXY", "127.0.0.1:9")
    expected = "the hub https://hub.invalid cannot be reached through the proxy 127.0.0.1:9: Connection refused"
    assert hub.offline_reason() == expected
