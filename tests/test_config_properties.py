"""Property tests of the configuration: whatever a YAML file or the command line holds, loading it either succeeds or
raises a DiffCoReMixError (the CLI: exit 2 with one line), never another exception.

Values are drawn to break validators: wrong types, negative and huge numbers, NaN and infinity, empty and unicode
strings, lists where scalars belong, nested sections, unknown keys. The CLI runs in-process on a missing DATA, so
every case ends at validation, before any model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffcoremix.cli.main import main
from diffcoremix.cli.options import config_sections
from diffcoremix.config import build_config, load_config_file
from diffcoremix.errors import DiffCoReMixError

SECTIONS = config_sections()
"""Every stage config a --config file may hold: scan, data, prompts, generate, filter, executor, train, finetune."""

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", " ", "é", "犬", "auto", "cpu", "tiny", "none", "1e9", "-1", "nan", "a,b", "../x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@st.composite
def layers(draw: st.DrawFn) -> tuple[type, dict[Any, Any]]:
    """A stage config class and a mapping of (mostly) its own option names to adversarial values."""
    cls = draw(st.sampled_from(sorted(SECTIONS.values(), key=lambda c: c.__name__)))
    keys = st.one_of(
        st.sampled_from(_fields(cls)),
        st.sampled_from([f.replace("_", "-") for f in _fields(cls)]),
        st.text(max_size=8),
        st.integers(),
    )
    return cls, draw(st.dictionaries(keys, values, max_size=4))


@BOUNDED
@given(layers())
def test_stage_configs_accept_or_raise_their_own_errors(drawn: tuple[type, dict[Any, Any]]) -> None:
    cls, layer = drawn
    try:
        config = build_config(cls, layer, section="s")
    except DiffCoReMixError:
        return
    for f in dataclasses.fields(config):  # what passed validation is a usable value
        value = getattr(config, f.name)
        assert not (isinstance(value, float) and not math.isfinite(value)), (f.name, value)


documents = st.one_of(
    values,
    st.dictionaries(st.sampled_from(sorted(SECTIONS)), st.dictionaries(st.text(max_size=8), values, max_size=3)),
    st.dictionaries(st.sampled_from([*sorted(SECTIONS), "nope"]), values, max_size=3),
)


@BOUNDED
@given(document=documents, section=st.sampled_from(sorted(SECTIONS)))
def test_config_files_load_or_raise_their_own_errors(document: Any, section: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    with contextlib.suppress(DiffCoReMixError):
        build_config(SECTIONS[section], load_config_file(path, section), section=section)


@pytest.mark.parametrize("text", ["a: [1", "- 1\n- 2", "x: !!python/object:os.system ls", "\t:", "{", "?"])
def test_unparsable_config_files_are_config_errors(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(DiffCoReMixError):
        build_config(SECTIONS["train"], load_config_file(path, "train"), section="train")


OPTIONS = {
    "train": ["--lr", "--epochs", "--max-steps", "--mix-prob", "--mix-alpha", "--grid", "--img-size", "-b", "--mean",
              "--seed", "--val-split", "--smoothing", "--model", "--method", "--workers", "--classes"],
    "generate": ["--num-inference-steps", "--guidance-scale", "--height", "--width", "--per-image", "--fraction",
                 "--seed", "--batch-size", "--preset", "--scheduler-kwargs", "--top-k", "--max-per-class"],
    "filter": ["--threshold", "--reference", "--text-check", "--batch-size", "--loader-workers", "--embedder"],
}  # fmt: skip
arguments = st.one_of(
    st.text(max_size=10).filter(lambda s: not s.startswith("-")),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "99999999999999999999999", "0.5", "", "{}", "[1]", "é"]),
)


@BOUNDED
@given(
    command=st.sampled_from(sorted(OPTIONS)),
    picks=st.lists(st.tuples(st.integers(min_value=0, max_value=15), arguments), min_size=1, max_size=3),
)
def test_cli_options_fail_in_one_line_before_any_work(
    command: str, picks: list[tuple[int, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    names = OPTIONS[command]
    argv = [command, "/no/such/data" if command != "filter" else "/no/such/out"]
    for index, value in picks:
        argv += [names[index % len(names)], value]
    if command != "filter":
        argv += ["-o", "/no/such/out"]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: a value of the wrong type, exit 2 with one line
        status = exit_.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "unexpected" not in err
    assert "Traceback" not in err


FLOAT_FIELDS = [(name, f.name) for name, cls in sorted(SECTIONS.items()) for f in dataclasses.fields(cls)
                if f.type in ("float", "float | None")]  # fmt: skip


@pytest.mark.parametrize(("section", "field"), FLOAT_FIELDS, ids=[f"{s}.{f}" for s, f in FLOAT_FIELDS])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_no_float_option_takes_a_non_finite_value(section: str, field: str, value: float) -> None:
    """NaN passes no comparison and infinity passes every upper-bound-free one: the type check refuses both."""
    with pytest.raises(DiffCoReMixError):
        build_config(SECTIONS[section], {field: value}, section=section)
