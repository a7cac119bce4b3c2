# Two commands on a fresh machine: `make demo` runs the DAG end to end on the embedded default,
# `make test` runs lint and the whole test suite. Everything they need is installed from this repository.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REQS   := requirements.txt inference_image/requirements.txt requirements-dev.txt

.PHONY: install demo airflow test lint format clean

install: $(STAMP)

$(STAMP): $(REQS) inference_image/pyproject.toml plugins/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; install Python 3.11 or pass PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(addprefix -r ,$(REQS))
	$(BIN)/python -m pip install --quiet --no-deps -e inference_image -e plugins
	touch $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py $(ARGS)

# Airflow's services on this machine as docker-compose.yaml runs them (PostgreSQL, api-server, scheduler,
# dag-processor, triggerer; state in var/airflow): prints the UI's address, Ctrl-C stops them. ARGS="--port 8081".
airflow: install
	bash scripts/install_postgres.sh
	$(BIN)/python -m scripts.local_airflow $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install lint
	bash scripts/install_browser.sh
	bash scripts/install_postgres.sh
	$(BIN)/python -m pytest

clean:
	rm -rf var test-artifacts .pytest_cache .ruff_cache
