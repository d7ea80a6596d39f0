# Reproducible study of DoITPoMS micrographs with CLIP and VLMs.
# `make` alone prints this help. Each target below with a `##` comment is documented.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-$(shell cat pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
NB_OUT := build/notebooks
# How notebooks are stored: no outputs, and none of the metadata JupyterLab adds on save (so a
# notebook saved in Lab leaves git clean; the kernel's display name is stored as Lab writes it).
# The git filter and `make lint` both use it.
NBSTRIPOUT_ARGS := --keep-id --extra-keys 'metadata.language_info'
# the study's notebooks in run order: notebooks/NN_*.ipynb (config.notebooks() reads the same)
NOTEBOOKS := $(sort $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.ipynb))))
PROFILE ?= full
# Where the scraper looks for the library; point it at a mirror with DOITPOMS_URL=http://...
DOITPOMS_URL ?=
export DOITPOMS_URL
# Seconds between requests to the site (politeness); 0 is fine for a local mirror.
SCRAPE_DELAY ?= 1.0
# Your own dataset folder (records.csv + images/), read as it is and never written to.
DATASET ?=
DATASET_DIR := $(if $(DATASET),$(abspath $(DATASET)))
# MICROQA_PUBLISH=1: these runs may publish to figures/, tables/, docs/ (lib/microqa/publishing.py)
PAPERMILL = MICROQA_PUBLISH=1 $(PY) -m papermill --no-progress-bar --log-output --cwd notebooks -p profile $(PROFILE) $(NB_PARAMS)

.PHONY: help setup reproduce executed report smoke test test-unit test-slow bench lab lint sample clean mutation

help: ## show this help
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "Variables: PROFILE=full|smoke  DATASET=<your folder>  DOITPOMS_URL=<mirror or site>  SCRAPE_DELAY=1.0  STRICT=1 (no offline substitutes)"

setup: $(SETUP_STAMP) ## create .venv and install the package with its pinned dependencies (idempotent)

$(SETUP_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.setup-*
	@# numba compiles UMAP's kernels on first use: once here rather than in the first notebook run
	$(PY) -c "from microqa.clip import embedding_space; embedding_space.compile_umap()"
	@# strip notebook outputs on `git add` (a notebook saved in JupyterLab keeps its outputs)
	@# then refresh the index once: a fresh clone's files are racily clean (written in the
	@# second the index was), so without it every `git status` (each result's commit stamp)
	@# would run the filter over every notebook, about 10 s each time
	@if git rev-parse --git-dir >/dev/null 2>&1; then $(VENV)/bin/nbstripout --install && \
	  git config filter.nbstripout.clean "$(abspath $(PY)) -m nbstripout $(NBSTRIPOUT_ARGS)" && \
	  git update-index -q --refresh >/dev/null || true; fi
	@touch $@

# Notebook -> library-module dependencies, computed from the imports (see tools/notebook_deps.py):
# touching a module re-executes exactly the notebooks that import it, directly or indirectly.
build/notebook-deps.mk: tools/notebook_deps.py $(wildcard notebooks/*.ipynb) $(shell find lib/microqa -name '*.py' 2>/dev/null)
	@mkdir -p build
	@$(PYTHON) tools/notebook_deps.py --out-dir $(NB_OUT) > $@

ifneq ($(filter reproduce executed $(NB_OUT)/%,$(MAKECMDGOALS)),)
-include build/notebook-deps.mk
endif

# Notebook 01 reruns when the data source settings change (e.g. from the unreachable live site
# to DOITPOMS_URL=http://127.0.0.1:8765/miclib/ served by `python -m microqa mirror`, or to
# DATASET=DIR); the stamp is rewritten only when they differ, so an unchanged setting rebuilds
# nothing. (Written while the Makefile is read, not by a rule, so `make -n`/`make -q` see the truth.)
DATA_SOURCE := url=$(DOITPOMS_URL) strict=$(STRICT) dataset=$(DATASET_DIR)
ifneq ($(filter reproduce executed $(NB_OUT)/%,$(MAKECMDGOALS)),)
$(shell mkdir -p build; echo '$(DATA_SOURCE)' | cmp -s - build/data-source.txt || echo '$(DATA_SOURCE)' > build/data-source.txt)
endif
$(NB_OUT)/01_scrape_doitpoms.ipynb: build/data-source.txt
$(NB_OUT)/01_scrape_doitpoms.ipynb: NB_PARAMS = -p delay $(SCRAPE_DELAY) -p dataset_dir '$(DATASET_DIR)'

# Each executed notebook also depends on the ones whose outputs it reads.
$(NB_OUT)/02_eda_class_imbalance.ipynb: $(NB_OUT)/01_scrape_doitpoms.ipynb
$(NB_OUT)/03_clip_zero_shot.ipynb: $(NB_OUT)/01_scrape_doitpoms.ipynb
$(NB_OUT)/04_vlm_qa.ipynb: $(NB_OUT)/01_scrape_doitpoms.ipynb $(NB_OUT)/03_clip_zero_shot.ipynb
$(NB_OUT)/05_comparison.ipynb: $(NB_OUT)/03_clip_zero_shot.ipynb $(NB_OUT)/04_vlm_qa.ipynb

# papermill writes to a temporary name first, so a failed run never leaves a target that
# looks up to date.
$(NB_OUT)/%.ipynb: notebooks/%.ipynb $(SETUP_STAMP)
	@mkdir -p $(NB_OUT)/partial
	$(PAPERMILL) $< $(NB_OUT)/partial/$*.ipynb
	@mv $(NB_OUT)/partial/$*.ipynb $@

# Notebooks whose inputs are ready run side by side (02 needs only 01, so it runs beside 03);
# REPRODUCE_JOBS=1 runs them one after another.
REPRODUCE_JOBS ?= 2
reproduce: setup ## run notebooks 01-05, regenerating figures/, tables/ and docs/ (only what changed)
	@$(MAKE) --no-print-directory -j$(REPRODUCE_JOBS) executed

executed: $(NOTEBOOKS:%=$(NB_OUT)/%.ipynb) build/report.stamp

# microqa.report.site decides where the report goes: docs/ only for a full-profile run on the full
# library, else build/runs/<run>/docs. `make reproduce` rebuilds it when a notebook changed.
report: setup ## render the executed notebooks in build/notebooks/ as the static site docs/
	MICROQA_PUBLISH=1 $(PY) -m microqa.report.site --notebooks $(NB_OUT)

build/report.stamp: $(NOTEBOOKS:%=$(NB_OUT)/%.ipynb) $(addprefix lib/microqa/report/,site.py index.py pages.py plots.py) $(wildcard docs_src/*.md) lib/microqa/publishing.py
	MICROQA_PUBLISH=1 $(PY) -m microqa.report.site --notebooks $(NB_OUT)
	@touch $@

# absolute, since the kernels run in notebooks/
SMOKE := $(CURDIR)/build/smoke
smoke: setup ## run every notebook in the fast smoke profile into build/smoke/ (figures/ untouched)
	@mkdir -p build/smoke/notebooks
	@for nb in $(NOTEBOOKS); do \
	  MICROQA_BUILD=$(SMOKE) MICROQA_FIGURES=$(SMOKE)/figures MICROQA_TABLES=$(SMOKE)/tables \
	  $(PY) -m papermill --no-progress-bar --cwd notebooks -p profile smoke notebooks/$$nb.ipynb $(SMOKE)/notebooks/$$nb.ipynb || exit 1; \
	done

lint: setup ## ruff (lint and format check) over the library, tests, benchmarks, tools and notebooks; notebooks stored without outputs
	$(PY) -m ruff check lib tests bench notebooks tools
	$(PY) -m ruff format --check lib tests bench notebooks tools
	$(PY) -m nbstripout $(NBSTRIPOUT_ARGS) --verify notebooks/*.ipynb

test: setup lint ## lint + the test suite (unit, mirror integration, notebooks in the smoke profile)
	$(PY) -m pytest -m "not slow" -q

test-unit: setup ## unit tests only (no notebooks, integration or slow tests, no lint), one worker per core
	$(PY) -m pytest -m "not slow and not notebooks and not integration" -q -n auto

mutation: setup ## mutation testing (mutmut) of the study logic; prints the kill rate (slow)
	rm -rf build/mutation && mkdir -p build/mutation/data
	cp -r pyproject.toml tests notebooks build/mutation/ && cp -r data/sample build/mutation/data/
	cp -r lib build/mutation/src  # mutmut names modules from a src/ layout
	@# MICROQA_JOBS=1: mutmut already runs one child per core, so no second layer of processes
	cd build/mutation && MICROQA_SHARED=$(abspath ..)/shared MICROQA_JOBS=1 PYTHONPATH= \
	  $(abspath $(VENV))/bin/mutmut run --max-children $(shell nproc) $(MUTANTS)
	cd build/mutation && $(abspath $(VENV))/bin/mutmut export-cicd-stats
	$(PY) -c "import json; s = json.load(open('build/mutation/mutants/mutmut-cicd-stats.json')); \
	caught = s['killed'] + s['timeout']; run = caught + s['survived'] + s['no_tests'] + s['suspicious']; \
	print(f'mutation kill rate: {caught}/{run} = {caught / max(1, run):.1%} of the mutants run', s)"
	$(PY) tools/mutant_classes.py  # the hand-written wrong-number bugs, one at a time

test-slow: setup ## the slow tests (full-mirror scrape, full pipeline on the mirror)
	$(PY) -m pytest -m slow -q

bench: setup ## speed benchmarks (CLIP embedding, VLM answering); prints images/s and ratios
	$(PY) bench/run.py

# root (a container, CI) needs --allow-root; runs from Lab never publish (publishing.py)
lab: setup ## start JupyterLab on the notebooks (their figures/tables go to build/runs/, not figures/)
	$(VENV)/bin/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

sample: setup ## rebuild the embedded sample data/sample/ from the mirror in ../shared/doitpoms
	$(PY) -m microqa sample --mirror ../shared/doitpoms --out data/sample

clean: ## remove build outputs (keeps .venv, data/ and the committed figures/tables)
	rm -rf build
