# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing
# and install the project with the exact versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_OUT ?= demo_out
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_CHROMIUM := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

.PHONY: install demo browser test test-all screenshot lint typecheck bench gpu-wheels clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffcoremix demo -o $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Headless Chromium for the tests that render HTML (Debian's package, driven by Playwright from the dev extras;
# Playwright's own browser downloads are never used). apt-get update runs only when the install fails without it.
browser:
	@test -x $(CHROMIUM) || $(APT_CHROMIUM) || { $(SUDO) apt-get update && $(APT_CHROMIUM); }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) is still missing after installing Debian's chromium" >&2; exit 1; }

# Two test processes (pytest-xdist, a test file per process at a time), one torch thread each: on two cores this
# halves the wall time; more threads per process would oversubscribe the cores.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadfile

test: lint typecheck browser
	$(PYTEST)

test-all: lint typecheck browser
	$(PYTEST) -m ''

# The README's picture of the report: the end-to-end demo test saves the top of the demo's page here.
screenshot: $(STAMP) browser
	DIFFCOREMIX_SCREENSHOT=$(CURDIR)/docs/report.png $(BIN)/pytest -m slow -k end_to_end tests/test_demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/plan_memory.py
	$(BIN)/python benchmarks/filter_quality.py
	$(BIN)/python benchmarks/filter_speed.py
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/mixing.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/finetune.py
	$(BIN)/python benchmarks/generation_quality.py
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/offline.py
	$(BIN)/python benchmarks/ray_scaling.py
	$(BIN)/python benchmarks/faults.py

# The wheels that benchmarks/gpu.sh installs on a lent GPU machine, which has no network (torch, transformers, timm,
# peft and accelerate are there already): diffusers, open_clip_torch and the two they need that it lacks, at the
# versions of constraints.txt, for its Python 3.12 on x86-64 Linux, into the ignored folder .whl/.
GPU_WHEELS := diffusers open_clip_torch ftfy wcwidth
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64

gpu-wheels:
	@pins=""; for name in $(GPU_WHEELS); do \
		pin=$$(grep -i "^$$name==" constraints.txt) || { echo "$$name is not pinned in constraints.txt" >&2; exit 1; }; \
		pins="$$pins $$pin"; done; \
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $$pins
	@ls .whl

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
