# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing
# and install the project with the exact versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_OUT ?= demo_out

.PHONY: install demo test test-all lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffcoremix sample-data $(DEMO_OUT)/data --overwrite
	$(BIN)/diffcoremix scan $(DEMO_OUT)/data
	$(BIN)/diffcoremix prompts $(DEMO_OUT)/data --pack generic --seed 0 -o $(DEMO_OUT)/prompts.jsonl
	@echo "fine-tuning the tiny generator on the sample dataset (its VAE, then its UNet and text encoder; about 2.5 minutes):"
	$(BIN)/diffcoremix finetune $(DEMO_OUT)/data -o $(DEMO_OUT)/generator --preset tiny --vae-steps 300 \
		--max-steps 1000 --batch-size 16
	$(BIN)/diffcoremix augment $(DEMO_OUT)/data -o $(DEMO_OUT)/augmented --preset tiny --model $(DEMO_OUT)/generator \
		--context sample --pack generic --seed 0 --per-image 2 --threshold 0.96 --retries 1
	@echo "manifest of $(DEMO_OUT)/augmented (first rows):"
	@$(BIN)/python -c "import diffcoremix as d; print(d.read_manifest('$(DEMO_OUT)/augmented')[['key', 'context', 'score', 'accepted']].head().to_string())"
	@echo "a smoke run of training (24 procedural images, tested on themselves; real figures: benchmarks/README.md):"
	$(BIN)/diffcoremix compare $(DEMO_OUT)/data --methods none,diffcoremix --seeds 0 --synthetic $(DEMO_OUT)/augmented \
		--test $(DEMO_OUT)/data --model resnet20 --img-size 32 -b 8 --lr 0.02 --max-steps 12 -o $(DEMO_OUT)/compare
	$(BIN)/diffcoremix eval $(DEMO_OUT)/compare/runs/none-seed0 $(DEMO_OUT)/compare/runs/diffcoremix-seed0 \
		--data $(DEMO_OUT)/data --saliency 3 -o $(DEMO_OUT)/eval

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

test-all: lint typecheck
	$(BIN)/pytest -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/filter_quality.py
	$(BIN)/python benchmarks/filter_speed.py
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/mixing.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/finetune.py
	$(BIN)/python benchmarks/generation_quality.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
