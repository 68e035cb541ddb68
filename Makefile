# Two commands do all the set-up: `make run` and `make test` (README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.artd-installed
# The optional extras installed with the dev tools (CI adds ray: EXTRAS=dev,ray).
EXTRAS ?= dev

.PHONY: run test lint format other-ray bench art-bench art-bench-quick soak default-model clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
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

# A second Ray, of another version than artd[ray]'s pin, in build/ray-other: the cluster
# tests/test_ray_version.py starts for a client to refuse (CI installs it; the test skips
# without it elsewhere). A --target install beside the venv's Ray, which it leaves alone.
OTHER_RAY_VERSION ?= 2.59.0
other-ray: build/ray-other/.installed

build/ray-other/.installed: $(STAMP)
	rm -rf build/ray-other
	$(PY) -m pip install --quiet --no-deps --target build/ray-other 'ray==$(OTHER_RAY_VERSION)'
	touch $@

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# The art benchmark alone (docs/art-benchmark.md): trains its two models once (cached in
# build/art-bench by the recipe's hash), writes docs/art-bench.md and docs/art-gallery.png.
# Any two denoise checkpoints: ART_ARGS='--model-a A.safetensors --model-b B.safetensors'.
ART_ARGS ?= --train
art-bench: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m bench.art $(ART_ARGS)

art-bench-quick: $(STAMP)
	$(PY) -m bench.art --train --quick --out bench/out/art

# The reliability suite with long fuzzing and bigger loops, and the 30-minute mixed soak
# (SOAK_MINUTES=N changes it; make test runs the short form, about 75 s of soak).
soak: $(STAMP)
	RELIABILITY_FULL=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests/reliability $(PYTEST_ARGS)

# Rebuilds the shipped model from procedural engravings (no internet, no third-party art);
# see core/assets/MODEL_CARD.md. A guided model (core/objectives/guided.py) on engravings
# drawn at a 5 px hatch period, supersampled and zoomed so each 64 px crop has the object
# scale of a 160 px working image. About 25 minutes on one CPU thread (one thread: the same
# weights on any machine with the same torch build).
DEFAULT_MODEL_EPOCHS ?= 40
default-model: $(STAMP)
	rm -rf build/default-model
	$(PY) -m core.synthetic.procedural --out build/default-model/data --count 2000 --size 64 --seed 2026 \
		--style engraving --flat --format png --stroke-period 5 --supersample 2 --scene-zoom 2.5
	OMP_NUM_THREADS=1 $(PY) -m core.train --data build/default-model/data --out build/default-model/runs \
		--objective guided --decoder upsample-full --epochs $(DEFAULT_MODEL_EPOCHS) --lr-step 30 \
		--batch-size 16 --image-size 64 --resize crop --perceptual-weight 0 --num-workers 0 \
		--checkpoint-every 5 --sample-every 5 --seed 2026 --device cpu --guide-dropout 0.1 \
		--sample-strength 0.5 --sample-steps 12 --no-tensorboard
	cp build/default-model/runs/run-*/checkpoints/best.safetensors core/assets/default.safetensors

clean:
	rm -rf var build *.egg-info
