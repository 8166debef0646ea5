# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_PIN := torch==2.13.0
JOBS ?= 2
CUDA_TORCH_PIN := torch==2.14.1
CUDA_VENV ?= $(HOME)/.cache/gemini/cuda-venv
TORCH_CUDA_ARCH_LIST ?= 9.0
SAN_LIB := build/sanitize/gemini_ops/_C.so

.PHONY: install test demo bench sanitize cuda-check lint clean

# torch only if missing, pinned (an unpinned torch pulls several GB of CUDA wheels)
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_PIN)
	@$(PYTHON) -c "import setuptools, wheel, ninja" 2>/dev/null || $(PIP) install setuptools wheel ninja
	MAX_JOBS=$(JOBS) $(PIP) install --no-build-isolation -e ".[test]"
	@$(PYTHON) -c "import gemini_ops, json; print(json.dumps(gemini_ops.backend_info()))"

test: install
	$(PYTHON) -m pytest -q --durations=15

demo: install
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m gemini_dcl.demo

# e.g. make bench BENCH_ARGS="--paths avx2 avx512 --threads 2 1 --busy-core"
BENCH_ARGS ?=
bench: install
	$(PYTHON) benchmarks/bench_ops.py $(BENCH_ARGS)

# The CUDA kernel sources built for the host (and the CPU kernels) under
# AddressSanitizer + UndefinedBehaviorSanitizer, running the op tests.
sanitize: install
	rm -rf build/sanitize build/sanitize-tmp
	GEMINI_SANITIZE=1 MAX_JOBS=$(JOBS) $(PYTHON) setup.py -q build_ext --build-lib build/sanitize --build-temp build/sanitize-tmp
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	GEMINI_OPS_LIBRARY=$(SAN_LIB) $(PYTHON) -m pytest tests/ops -q -p no:cacheprovider -m "not slow" -k "not compile and not jit"

# The real CUDA extension against torch's CUDA build, in its own environment;
# every symbol must resolve and the CUDA kernels must be registered.
cuda-check:
	@$(CUDA_VENV)/bin/python -c "import torch; assert torch.__version__.startswith('2.14.1') and torch.version.cuda" 2>/dev/null || \
	  ( rm -rf $(CUDA_VENV) && $(PYTHON) -m venv $(CUDA_VENV) && \
	    $(CUDA_VENV)/bin/pip install $(CUDA_TORCH_PIN) ninja setuptools wheel numpy )
	rm -rf build/cuda build/cuda-tmp
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" MAX_JOBS=$(JOBS) \
	  $(CUDA_VENV)/bin/python setup.py -q build_ext --build-lib build/cuda --build-temp build/cuda-tmp
	LD_BIND_NOW=1 GEMINI_OPS_LIBRARY=build/cuda/gemini_ops/_C.so PYTHONPATH=$(CURDIR) \
	  $(CUDA_VENV)/bin/python scripts/check_cuda_build.py

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

clean:
	rm -rf build gemini_ops/_C*.so *.egg-info
