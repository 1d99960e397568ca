# `make demo` and `make test` work on a fresh machine: both create or reuse .venv first.
.PHONY: demo demo-s3 serve test test-bench test-cluster test-slow lint bench clean

VENV := .venv
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0

$(VENV)/.installed: pyproject.toml infra/bootstrap.sh infra/models-no-deps.txt
	./infra/bootstrap.sh

demo: $(VENV)/.installed
	$(VENV)/bin/embedpipe run configs/demo.yaml

# the demo's live alias on http://127.0.0.1:8000 (after make demo); follows promotions and rollbacks
serve: $(VENV)/.installed
	$(VENV)/bin/embedpipe serve .embedpipe scifact-demo --alias live

demo-s3: $(VENV)/.installed
	./infra/demo-s3.sh

test: lint
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test-bench: $(VENV)/.installed  # every benchmark's --smoke run (7-8 minutes on 2 cores of a Zen 4, 10-12 on a Zen 3); CI runs it after `make test`
	$(VENV)/bin/python -m pytest -m bench

test-cluster: $(VENV)/.installed  # the two-node Ray cluster test (~3 minutes); CI runs it after `make test`
	$(VENV)/bin/python -m pytest -m cluster

test-slow: $(VENV)/.installed  # a process worker running a deployment, the 30 s load test (~3 minutes); CI runs it too
	$(VENV)/bin/python -m pytest -m slow

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/scifact_reference.py
	$(VENV)/bin/python benchmarks/representations.py

clean:
	rm -rf .embedpipe benchmarks/out
