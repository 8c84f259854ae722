# The two commands that do everything on a fresh machine:
#   make demo   set up .venv, then run the whole workflow on the embedded default (config/config.yaml)
#   make test   set up .venv, then run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= 2

.PHONY: setup test test-fast test-slow demo ladder magnitudes-digits lint format profile-link container clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder -m "not slow and not slurm"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --cores 1 --configfile config/config.yaml --report results/report.html

# The digits ladder: Table 1 and Fig. 5a of configs A-G (results/ablation-digits), then Fig. 15
# from the magnitude ladder of C, D, E, G trained longer (results/magnitudes-digits).
ladder: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --cores $(CORES) --configfile config/ablation-digits.yaml
	$(MAKE) magnitudes-digits

# EDM2 Fig. 15 on the digits (configs C, D, E, G): results/magnitudes-digits/plots/fig15-magnitudes.png
magnitudes-digits: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --cores $(CORES) fig15 --configfile config/magnitudes-digits.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check edm2 tests benchmarks
	$(VENV)/bin/ruff format --check edm2 tests benchmarks
	$(VENV)/bin/snakefmt --check workflow

format: $(STAMP)
	$(VENV)/bin/ruff format edm2 tests benchmarks
	$(VENV)/bin/snakefmt workflow
	$(VENV)/bin/ruff check --fix edm2 tests benchmarks

# Lets `snakemake --profile slurm` work as typed (Snakemake looks in ~/.config/snakemake/).
profile-link:
	mkdir -p $(HOME)/.config/snakemake
	ln -sfn $(CURDIR)/workflow/profiles/slurm $(HOME)/.config/snakemake/slurm
	@echo "linked $(HOME)/.config/snakemake/slurm -> workflow/profiles/slurm"

# Builds the Dockerfile with its self-checks on a locally made Debian base (podman; needs root).
container:
	bash ci/container/build.sh

clean:
	rm -rf $(VENV) .pytest_cache
