# Two commands do all the set-up: `make run` and `make test` (README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.artd-installed

.PHONY: run test lint format bench soak default-model clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/artd run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# The reliability suite with long fuzzing and bigger loops (make test runs the short form).
soak: $(STAMP)
	RELIABILITY_FULL=1 $(PY) -m pytest tests/reliability $(PYTEST_ARGS)

# Rebuilds the shipped model from procedural data (no internet); see core/assets/MODEL_CARD.md.
default-model: $(STAMP)
	rm -rf build/default-model
	$(PY) -m core.procedural --out build/default-model/data --count 1000 --size 160 --seed 2026 --vary-aspect
	OMP_NUM_THREADS=1 $(PY) -m core.train --data build/default-model/data --out build/default-model/runs \
		--epochs 12 --lr-step 5 --image-size 96 --perceptual-weight 0 --num-workers 0 \
		--checkpoint-every 4 --sample-every 4 --seed 2026 --device cpu
	cp build/default-model/runs/run-*/checkpoints/best.safetensors core/assets/default.safetensors

clean:
	rm -rf var build *.egg-info
