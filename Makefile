# SERNF on ROS 2. Every target runs tools/bootstrap.sh first: it installs what is missing
# (Debian packages, .venv with pinned wheels, the colcon build) and is a no-op otherwise.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
IN_ENV := source env.sh &&
# Cap threads: the target machines have 2 cores and tests start several processes.
export OMP_NUM_THREADS ?= 2
PYTEST_ARGS ?=
# Test worker processes (pytest-xdist): one per core of the 2-core target machine. Tests of one file
# stay in one worker (--dist loadfile), so module fixtures are built once. Each worker runs torch
# on one thread: two workers of two threads each on two cores made the heaviest tests up to 7x
# slower (OpenMP threads spinning against each other); tests that need more set it themselves.
TEST_WORKERS ?= 2
TEST_ENV := OMP_NUM_THREADS=1

.PHONY: setup test test-fast lint demo sim-data scissors-sim-data bench bench-learning lock clean

setup:
	@bash tools/bootstrap.sh

lint: setup
	@$(IN_ENV) ruff check .
	@$(IN_ENV) hadolint docker/*.Dockerfile && echo "hadolint: docker/*.Dockerfile clean"

## Every test (unit, ROS integration over DDS, slow end-to-end); non-zero exit on any failure.
test: lint
	@$(IN_ENV) $(TEST_ENV) python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## The same without the slow end-to-end tests, for quick local iteration.
test-fast: lint
	@$(IN_ENV) $(TEST_ENV) python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

## The main job: the simulated SERNF pipeline (IL -> critic warm-up -> offline RL -> online RL).
demo: setup
	@$(IN_ENV) python -m sernf.demo $(DEMO_ARGS)

## What the simulated ROS graph (python -m sernf.run_graph sim) needs: demonstrations and the
## offline stages' policy under results/sim (~15 min on 2 cores).
sim-data: setup
	@$(IN_ENV) python -m sernf.demo --config config/demo_hand.yaml --out results/sim --offline-only

## What the simulated scissors graph (python -m sernf.run_graph scissors sim:=true) needs: scripted
## demonstrations in the graph's layout (three 64x64 views, 17 joints, base-frame EE pose) and the
## offline stages' CPU-sized policy under results/scissors_sim (config/train_scissors_sim.yaml).
scissors-sim-data: setup
	@$(IN_ENV) python -m sernf.scissors_sim_data --out results/scissors_sim $(SCISSORS_SIM_DATA_ARGS)

## Speed / size figures (printed, never asserted; docs/performance.md). Each speed figure is
## printed beside the matmul rate measured in the same run, and the optimised model paths beside
## the reference ones, interleaved. GPU figures: python bench/gpu.py on a CUDA machine.
bench: setup
	@$(IN_ENV) python bench/model_size.py
	@$(IN_ENV) python bench/replay_throughput.py
	@$(IN_ENV) python bench/matmul_rate.py
	@$(IN_ENV) python bench/inference_latency.py --reference --node-threads
	@$(IN_ENV) python bench/chunk_latency.py --threads 2 --scissors-chunks 3 --cube-chunks 100
	@$(IN_ENV) python bench/learner_throughput.py --reference
	@$(IN_ENV) python bench/feature_cache.py --threads 1 --updates 6 --episodes 10 --length 30

## The learning benchmark of docs/results.md: 8 methods x 5 seeds on the point task, then on the
## hand task (results/bench_learning/{point,hand}/; hours of CPU, resumable: run it again to
## continue). BENCH_LEARNING_ARGS=--quick: the CI smoke form (2 seeds, tiny budgets, 20 eval
## episodes; results/bench_learning_quick/{point,hand}/).
BENCH_LEARNING_ARGS ?=
bench-learning: setup
	@$(IN_ENV) python bench/learning.py --config config/point_full.yaml --methods all --jobs 2 --threads 1 \
		$(BENCH_LEARNING_ARGS)
	@$(IN_ENV) python bench/learning.py --config config/bench_hand.yaml --methods all --jobs 2 --threads 1 \
		$(BENCH_LEARNING_ARGS)

## Regenerate the lock file from the current .venv.
lock:
	@{ echo "# Lock file: every package of the .venv, pinned (pip freeze). Used as pip -c by bootstrap."; \
	  .venv/bin/pip freeze | grep -v -e '^-e' -e '@ file' -e '^# Editable' -e '^sernf'; } > requirements/constraints.txt

clean:
	rm -rf build install log
