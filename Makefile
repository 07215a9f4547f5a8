# harness: the README's two set-up commands are `make sweep` and `make test`; both install first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
# W&B and torch caches stay out of the home folder when tracking lands; see README
export MPLCONFIGDIR := $(CURDIR)/runs/.mplconfig

.PHONY: install test sweep bug-demo bug-demo-blind report trial lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# pinned torch pair: a CUDA build that also runs on the CPU (see DESIGN.md section 5)
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

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
