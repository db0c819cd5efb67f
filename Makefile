# Two commands on a fresh machine: `make demo` and `make test` (both set up what they need, idempotently).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps label-studio mlserver demo test test-unit screenshot lint bench soak chart-schema clean

setup: $(STAMP)

# torch first, pinned: on the project's machines the CPU wheel of 2.13.0 lies on disk and pip takes it.
# Elsewhere, point pip at PyTorch's CPU index, or PyPI's default (CUDA, several GB) is what you get:
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the tests use: prometheus + promtool (alert rules, a real Prometheus), chromium +
# chromium-driver (the labelling page's browser test).
system-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && \
		command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium chromium-driver >/dev/null; }

# Label Studio for the bridge's integration test, in a venv of its own: installed into .venv it would
# downgrade numpy (2.4 -> 2.2; pip install --dry-run --report label-studio==1.23.2).
LS_VENV  ?= .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed-1.23.2
label-studio: $(LS_STAMP)
$(LS_STAMP):
	python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q label-studio==1.23.2
	touch $(LS_STAMP)

# MLServer (a model server speaking the Open Inference Protocol v2) for the remote-model integration
# tests (kind: http), in a venv of its own: its pinned server stack (fastapi, uvicorn, grpcio, protobuf)
# stays out of .venv. The tests start it with a custom runtime (tests/data/mlserver/toy_runtime.py).
MLS_VENV  ?= .venv-mlserver
MLS_STAMP := $(MLS_VENV)/.installed-1.7.1
mlserver: $(MLS_STAMP)
$(MLS_STAMP):
	python3 -m venv $(MLS_VENV)
	$(MLS_VENV)/bin/python -m pip install -q --upgrade pip
	$(MLS_VENV)/bin/python -m pip install -q mlserver==1.7.1
	touch $(MLS_STAMP)

demo: setup
	$(VENV)/bin/shadowd demo

# Lint and format check first: a finding fails `make test` (and CI) before any test runs.
lint: setup
	$(VENV)/bin/ruff check shadowd tests bench helm
	$(VENV)/bin/ruff format --check shadowd tests bench helm
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: setup system-deps label-studio mlserver lint
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

# Retake the labelling page's screenshot the README shows (a normal test run leaves it alone).
screenshot: setup system-deps
	SHADOWD_WRITE_SCREENSHOT=1 $(PY) -m pytest -q tests/integration/test_annotate_page.py

# Regenerate helm/shadowd/values.schema.json after changing shadowd/config.py (a test checks they agree).
chart-schema: setup
	$(PY) helm/shadowd/hack/gen_values_schema.py

# The commands bench/RESULTS.md quotes (about 18 minutes on 2 cores; the fault battery mounts a small
# tmpfs as the daemon's data dir when run as root, else it limits the hub's file size instead).
bench: setup
	$(PY) bench/latency.py --rounds 10 --block 100
	$(PY) bench/stats_simulation.py --runs 100
	$(PY) bench/expectations_bench.py
	$(PY) bench/faults.py
	$(PY) bench/hub.py --rounds 5
	$(PY) bench/shards.py --rounds 3
	$(PY) bench/lineup.py

# Ten minutes at 70 % of saturation, no faults: memory and open files stay flat, nothing lost.
soak: setup
	$(PY) bench/faults.py --soak 600

clean:
	rm -rf $(VENV) $(LS_VENV) $(MLS_VENV) shadowd-data .pytest_cache
