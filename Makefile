# harness: the README's two set-up commands are `make sweep` and `make test`; both install first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
# matplotlib's cache goes under runs/, not the home folder (W&B keeps its files in the run folder)
export MPLCONFIGDIR := $(CURDIR)/runs/.mplconfig

.PHONY: story story-blind install test test-fast test-deps sweep bug-demo bug-demo-blind report trial lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	@test -x $(BIN)/python || bash scripts/ensure-venv.sh $(PYTHON)  # Debian: python3.X-venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# pinned torch pair: a CUDA build that also runs on the CPU (see README)
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The test suite; first installs what it needs when missing (chromium, PostgreSQL: see the script).
# Extra pytest arguments: make test PYTEST_ARGS='-k report'
PYTEST_ARGS ?=
test: $(STAMP) test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests without the ones marked slow.
test-fast: $(STAMP) test-deps
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The system packages the tests need (Debian, root); prints one line when they are there.
test-deps:
	@bash scripts/install-test-deps.sh

# The default study on the built-in dataset (runs/default/); running it again resumes it.
sweep: $(STAMP)
	$(BIN)/harness sweep sweeps/default.yaml
	$(BIN)/harness report default

# A study with injected silent bugs in a share of its trials: each should end up flagged.
bug-demo: $(STAMP)
	$(BIN)/harness sweep sweeps/bug-demo.yaml
	$(BIN)/harness report bug-demo

# The same study with the audit and the update monitor off: only the study-level detector flags.
bug-demo-blind: $(STAMP)
	$(BIN)/harness sweep sweeps/bug-demo.yaml --study bug-demo-blind --no-audit --no-monitor
	$(BIN)/harness report bug-demo-blind

# The story with the user's own code (examples/story: their DeconvNet and their optimiser line):
# every trial is flagged by the audit, the update monitor and the learning check.
story: $(STAMP)
	PYTHONPATH=examples/story $(BIN)/harness sweep examples/story/story.yaml
	PYTHONPATH=examples/story $(BIN)/harness report story --model story.deconvnet:make

# The same code where the bug depends on a parameter (f_lr < lr), with no structural check:
# the study-level detector flags the buggy trials and says what they share.
story-blind: $(STAMP)
	PYTHONPATH=examples/story $(BIN)/harness sweep examples/story/story-blind.yaml --no-audit --no-monitor
	PYTHONPATH=examples/story $(BIN)/harness report story-blind --model story.deconvnet:make

# One self-contained HTML page of a study: runs/$(STUDY)/report/report.html (+ the PNGs).
STUDY ?= default
report: $(STAMP)
	$(BIN)/harness report $(STUDY)

trial: $(STAMP)
	$(BIN)/harness trial

lint: $(STAMP)
	$(BIN)/ruff check harness tests
	$(BIN)/ruff format --check harness tests
	$(BIN)/mypy harness

bench: $(STAMP)
	$(BIN)/harness bench

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
