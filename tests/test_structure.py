"""The package's structure holds: stages import only downward, no module cycles, and every module imports alone."""

from __future__ import annotations

import os
import pkgutil
import re
import shutil
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .helpers import REPO

PACKAGE = REPO / "src" / "diffcoremix"


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":  # runs the command line
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """import-linter's contracts (pyproject.toml) over the package found first on ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [str(Path(sys.executable).with_name("lint-imports")), str(REPO / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)


def test_the_import_contracts_are_kept() -> None:
    result = _lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("manifest/layout.py", "import diffcoremix.generate.runner", "imports only downward"),  # an upward import
        ("data/folder.py", "import diffcoremix.filter.runner", "imports only downward"),
        ("generate/runner.py", "import diffcoremix.filter.config", "imports only downward"),  # siblings: independent
        ("manifest/layout.py", "import diffcoremix.manifest.records", "No import cycles"),  # records imports layout
        ("prompts/choices.py", "import diffcoremix.prompts.sample_context", "No import cycles"),
    ],
)
def test_the_contracts_catch_an_upward_import_and_a_cycle(tmp_path: Path, module: str, line: str, broken: str) -> None:
    copy = tmp_path / "src" / "diffcoremix"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    result = _lint_imports(tmp_path / "src")
    assert result.returncode != 0, result.stdout
    assert f"{broken}" in result.stdout.split("Broken contracts")[-1]


@pytest.mark.slow  # about 100 s: a fresh interpreter per module; import cycles are also the contracts' business
def test_every_module_imports_alone() -> None:
    def load(module: str) -> tuple[str, int, str]:
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                                timeout=120, check=False)  # fmt: skip
        return module, result.returncode, result.stderr[-2000:]

    modules = _modules()
    assert len(modules) > 40
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [(m, err) for m, code, err in pool.map(load, modules) if code != 0]
    assert failures == []


@pytest.mark.parametrize("first", ["", "import diffcoremix.augmentation, diffcoremix.filter.runner; "])
def test_the_lazy_public_names_stay_what_they_name(first: str) -> None:
    # dcm.augment was the function on first use and the module diffcoremix.augment afterwards (the import of a
    # submodule sets the package attribute of its name): every lazy name must give the same object every time.
    code = (f"{first}import types, diffcoremix as d; from diffcoremix import augment, filter_run, AugmentResult; "
            "names = [d.augment, d.augment, augment, d.filter_run, filter_run, d.AugmentResult, AugmentResult]; "
            "assert not [n for n in names if isinstance(n, types.ModuleType)], names; "
            "assert d.augment.__name__ == 'augment' and d.filter_run.__name__ == 'filter_run'")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def _walk_modules() -> list[str]:
    """Every module of the package as ``pkgutil`` finds it (``__main__`` aside: it runs the command line)."""
    import diffcoremix

    found = pkgutil.walk_packages(diffcoremix.__path__, "diffcoremix.")
    return ["diffcoremix", *(m.name for m in found if not m.name.endswith(".__main__"))]


def test_import_as_gives_every_module_and_every_public_name_resolves() -> None:
    # `import diffcoremix.generate as gen` binds getattr(diffcoremix, "generate"), not sys.modules' entry: a function
    # of that name re-exported by the package hid the module (gen.GenerateConfig failed). Python's own statement,
    # for every module, then every name each one's __all__ promises.
    hidden, missing = [], []
    for name in _walk_modules():
        namespace: dict[str, object] = {}
        try:
            exec(f"import {name} as module", namespace)
        except ImportError as error:  # `import diffcoremix.generate.runner as m` needs getattr(function, "runner")
            hidden.append(f"{name}: {error}")
            continue
        module = namespace["module"]
        if not isinstance(module, types.ModuleType) or module is not sys.modules[name]:
            hidden.append(f"{name} -> {module!r}")
            continue
        missing += [f"{name}.{attr}" for attr in getattr(module, "__all__", ()) if not hasattr(module, attr)]
    assert len(_walk_modules()) > 40
    assert hidden == []
    assert missing == []


def test_the_readme_python_api_names_exist() -> None:
    # The README's Python lines: each `from diffcoremix... import ...` runs, each `dcm.a.b` resolves, and the error
    # classes its errors paragraph places in diffcoremix.generate and diffcoremix.train are there.
    import diffcoremix as dcm

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    imports = re.findall(r"^from (diffcoremix[\w.]*) import ([\w, ]+?)\s*(?:#.*)?$", readme, flags=re.M)
    assert len(imports) >= 5
    for module, names in imports:
        exec(f"from {module} import {names}", {})
    dotted = set(re.findall(r"\bdcm\.(\w+(?:\.\w+)*)", readme))
    assert {"generate.generate", "augment", "filter_run"} <= dotted
    for path in dotted:
        obj: object = dcm
        for part in path.split("."):
            assert hasattr(obj, part), f"dcm.{path}: no {part!r} in {obj!r}"
            obj = getattr(obj, part)
    import diffcoremix.generate as gen
    import diffcoremix.train as train

    assert [gen.RunConflictError.__name__, gen.GenerationError.__name__, train.RunError.__name__] == [
        "RunConflictError",
        "GenerationError",
        "RunError",
    ]
    assert gen.generate.__module__ == "diffcoremix.generate.runner"
