# The two set-up commands: `make demo` and `make test`. Everything installs into .venv/ in the repo root.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Local Ray keeps every port on 127.0.0.1 (see etc_core/ray_utils.py).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install lock test demo bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Linux x86_64: every package at the version and sha256 of requirements.lock (torch 2.14.1 among them), then the
	# project alone. Elsewhere: torch first, from the pinned builds, then the rest under constraints that hold them.
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then \
	    $(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.lock && \
	    $(PY) -m pip install --quiet --no-deps -e . ; \
	else \
	    $(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 && \
	    $(PY) -m pip install --quiet -c constraints.txt -e '.[test,infer,sweep,server]' ; \
	fi
	$(PY) -m pip check
	touch $(STAMP)

# requirements.lock again, after a change to pyproject.toml or constraints.txt (infra/lock.py says how)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet --dry-run --ignore-installed --report .lock-venv/report.json \
	    -c constraints.txt torch==2.14.1 torchvision==0.29.1 -e '.[test,infer,sweep,server]'
	$(PYTHON) infra/lock.py .lock-venv/report.json requirements.lock
	rm -rf .lock-venv

# Two test processes (pytest-xdist, worksteal): most tests keep one core busy (Ray start-up, single-threaded
# training). TEST_WORKERS=0: one process. The 30 slowest tests are listed at the end (the suite must stay under 25 min).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=30 tests

demo: $(STAMP)
	$(PY) pipelines/full.py --config configs/demo.yaml

# The scripts of BENCH, in order, from a clean runs/bench/, then docs/benchmarks.md (its intro names them from this
# line; each script's last wall time is on that page: hours on 2 cores). The reproduction resumes from its ledger
# (benchmarks/results/reproduce_ledger.json): only models without a row are trained; `--remeasure` trains them all.
# Not in BENCH, each run by its own command (the page's table gives it): the reproduction's sweep
# (python -m benchmarks.reproduce --sweep), the motion study (--config configs/reproduce_motion.yaml), the KD study.
BENCH := data_acceptance reproduce train_overhead inference flow_stage flow_epe flow_encoding scale soak
bench: $(STAMP)
	rm -rf runs/bench
	set -e; for b in $(BENCH); do $(PY) -m benchmarks.$$b; done
	$(PY) -m benchmarks.report

# The same scripts at tiny sizes (numbers meaningless): checks they run, in a few minutes.
bench-quick: $(STAMP)
	set -e; for b in $(BENCH); do $(PY) -m benchmarks.$$b --quick; done

clean:
	rm -rf $(VENV) .pytest_cache
