# The two commands of the README. Each sets itself up on a fresh machine (Python 3.11, no conda):
# a virtual environment in .venv with the CPU wheel of torch, then the package in editable mode.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
# When make started and whether it builds .venv first: each campaign target records its wall time, set-up
# included, beside the verdict it wrote (make_time.json; docs/results.md shows it).
STARTED := $(shell date +%s)
SET_UP  := $(if $(wildcard $(STAMP)),false,true)
TIMING   = $(BIN)/python -m alphastomics timing --target "make $@" --started $(STARTED) --set-up $(SET_UP) \
	  --cores $(CORES) --verdict

.PHONY: run test test-slurm test-all setup clean chromium learning-curve powered tissues tissue-ablations \
	stability claims results-page

# Locally, one thread per training/sampling/evaluate job and CORES jobs side by side (how the README's
# timing of `make run` was measured); on a cluster, threads follow resources in config/config.yaml.
run: $(STAMP)  ## the full pipeline on the bundled data, ending in results/report.html
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --set-threads train=1 sample=1 evaluate=1
	$(TIMING) results/verdict.json

# The powered design on bdtnp (config/powered.yaml; docs/results.md): 4-fold cross-validation over the slabs,
# 4 sampling draws, 3 variants; its report and verdict go to results/powered/.
powered: $(STAMP)  ## the design that resolves the question's contrasts on bdtnp (docs/results.md)
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --set-threads train=1 sample=1 evaluate=1 \
	  --configfile config/powered.yaml
	$(TIMING) results/powered/verdict.json

# The question on two real cortices (config/tissues.yaml; docs/results.md, "Each data set"): MERFISH MOp and
# STARmap mPFC, leave-one-section-out; report and verdict in results/tissues/ (beside make run's, if run).
tissues: $(STAMP)  ## the question on real tissue sections (docs/results.md)
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --set-threads train=1 sample=1 evaluate=1 \
	  --configfile config/tissues.yaml
	$(TIMING) results/tissues/verdict.json

# What the real-tissue design changes, one change at a time (config/tissues_ablation.yaml); after make tissues.
tissue-ablations: $(STAMP)  ## rotation and the scored placement, ablated on the real tissues
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --set-threads train=1 sample=1 evaluate=1 \
	  --configfile config/tissues_ablation.yaml

# The gated-attention paper's training claims on bdtnp (config/stability.yaml; docs/training.md, "Stability and
# convergence"): 5 variants x 5 learning rates x 3 seeds, then results/stability/stability.json, .md and .png.
# --keep-going: a run that fails (e.g. a sampler that diverged) does not stop the other runs.
stability: $(STAMP)  ## divergence and convergence at larger learning rates; about 35 minutes on 2 cores
	$(BIN)/snakemake stability --profile workflow/profiles/default --cores $(CORES) \
	  --set-threads train=1 sample=1 evaluate=1 --keep-going --configfile config/stability.yaml

# Every claim of the design note in one table (config/claims.yaml; docs/results.md, "The design note's
# claims"): the three tasks on bdtnp and expression on STARmap, 5 seeds, read with make stability's sweep
# (run first); report, verdict and claims table in results/claims/.
claims: stability  ## every claim of the design note, measured; about 75 minutes on 2 cores with make stability
	$(BIN)/snakemake --profile workflow/profiles/default --cores $(CORES) --set-threads train=1 sample=1 evaluate=1 \
	  --configfile config/claims.yaml
	$(TIMING) results/claims/verdict.json

# docs/results.md, written whole in one command from the verdicts of make run, make tissues, make claims and
# make powered, in this order (alphastomics/analysis/markdown.py); a target not run is a line of the page.
results-page: $(STAMP)  ## docs/results.md from the verdicts of run, tissues, claims and powered (one command)
	$(BIN)/python -m alphastomics report --markdown results/verdict.json results/tissues/verdict.json \
	  results/claims/verdict.json results/powered/verdict.json --out docs/results.md

learning-curve: $(STAMP)  ## quality against training steps (docs/training.md); about 20 minutes on 2 cores
	$(BIN)/snakemake learning_curve --profile workflow/profiles/default --cores $(CORES) --set-threads study_train=1 study_sample=1 study_evaluate=1

test: $(STAMP) chromium  ## the fast test suite (what CI runs)
	$(BIN)/pytest -n $(CORES) --dist loadfile

# The workflow on a real one-node SLURM cluster (tests/test_slurm.py). Not in `make test`: it installs SLURM,
# munge and MariaDB from Debian (root) and starts their daemons; the module starts the cluster when it is not
# up and stops what it started. CI (.ci/run) runs it after `make test`.
test-slurm: $(STAMP)  ## the tests on a real SLURM cluster (root; what CI runs after make test)
	$(BIN)/pytest -p no:xdist -m slurm tests/test_slurm.py

test-all: $(STAMP) chromium  ## the fast, slow and SLURM tests
	$(BIN)/pytest -n $(CORES) --dist loadfile -m "not gpu"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,tangram,novosparc]' pytest-xdist
	touch $@

# Headless Chromium renders the HTML report in its test (Debian package; needs root to install).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium is not installed and this is not root: the report render test will be skipped"; }

clean:
	rm -rf results/data results/logs results/benchmarks results/report.html results/verdict.json .snakemake
