# tgi-async: every target installs what it needs first, so each is ONE command on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE_DIR ?= .cache
TINY_MODEL := $(CACHE_DIR)/tiny-model-seed0
# CPU installs pin the CPU build; set TORCH_SPEC/TORCH_INDEX_URL for a CUDA build on GPU machines.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
MODEL_ID ?= $(TINY_MODEL)
PORT ?= 3000
SCHEDULER ?= async
PYTEST_ARGS ?=
# TGI's own shard (v3.3.7, CPU) for the tests that drive it: built from ../shared/tgi-shard when that folder is
# there (CI has it), cached under $(CACHE_DIR); without it those tests skip and say why.
TGI_SHARD_SRC ?= ../shared/tgi-shard
TGI_SHARD_DIR := $(CACHE_DIR)/tgi-shard
TGI_SHARD_BIN := $(TGI_SHARD_DIR)/bin/text-generation-server

.PHONY: install run test lint format proto bench clean tiny-model tgi-shard

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# The stamp changes when the dependency list does.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	# NOTE: text-generation 0.7 caps huggingface-hub < 1 (transformers 5 needs >= 1.31); its code runs on
	# both, so the client used by our compatibility tests is installed without its resolver pins.
	$(BIN)/pip install -q --no-deps text-generation==0.7.0
	touch $@

install: $(VENV)/.installed

$(TINY_MODEL)/tgi_async_tiny.json: | $(VENV)/.installed
	$(BIN)/tgi-async make-tiny-model $(TINY_MODEL) --seed 0

tiny-model: $(TINY_MODEL)/tgi_async_tiny.json

# Best effort: a failed build (no package registry, say) is written down and the TGI-shard tests skip with it.
$(TGI_SHARD_DIR)/.built: $(wildcard $(TGI_SHARD_SRC)/build.sh $(TGI_SHARD_SRC)/*.tar.gz)
	@mkdir -p $(TGI_SHARD_DIR)
	@if [ ! -x "$(TGI_SHARD_SRC)/build.sh" ]; then \
		echo "no $(TGI_SHARD_SRC)/build.sh here" > $(TGI_SHARD_DIR)/.unavailable; \
	elif "$(TGI_SHARD_SRC)/build.sh" "$(abspath $(TGI_SHARD_DIR))" > $(TGI_SHARD_DIR)/build.log 2>&1; then \
		rm -f $(TGI_SHARD_DIR)/.unavailable; \
	else \
		echo "build.sh failed: $$(tail -n 3 $(TGI_SHARD_DIR)/build.log | tr '\n' ' ')" > $(TGI_SHARD_DIR)/.unavailable; \
	fi
	@touch $@

tgi-shard: $(TGI_SHARD_DIR)/.built

# Serve MODEL_ID (default: the tiny model) on http://127.0.0.1:$(PORT): bundled shard + router.
run: install tiny-model
	$(BIN)/tgi-async launch --model-id $(MODEL_ID) --port $(PORT) --scheduler $(SCHEDULER)

test: install tiny-model tgi-shard
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	TGI_SHARD_BIN=$${TGI_SHARD_BIN:-$$([ -x $(TGI_SHARD_BIN) ] && echo $(abspath $(TGI_SHARD_BIN)))} \
		$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerate the generate.v3 messages. protoc's runtime-version check is removed so one file imports under
# protobuf 5.29 (TGI's image) and 7.x; tests/test_proto_compat.py checks both.
proto: install
	cd tgi_async/proto && ../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. generate.proto
	sed -i -e '/^from google.protobuf import runtime_version/d' \
	       -e '/^_runtime_version.ValidateProtobufRuntimeVersion(/,/^)/d' tgi_async/proto/generate_pb2.py

bench: install tiny-model
	$(BIN)/python -m benchmarks.shard_step
	$(BIN)/python -m benchmarks.router_cpu
	$(BIN)/python -m benchmarks.schedulers
	$(BIN)/python -m benchmarks.grammar_throughput --num-threads 1

clean:
	rm -rf $(VENV) $(CACHE_DIR) .pytest_cache .ruff_cache
