# ucdir-lite: every target sets up what it needs (a virtualenv in .venv) on a fresh machine.
#   make book   - the main job: generate the embedded data, execute every notebook, build _build/html
#   make test   - the test command (.ci/run runs it): lint, notebook pairs, the unit tests on
#                 1 and 2 threads with the CPU's own and with AVX2 kernels, notebooks under
#                 nbmake and the whole book, both in the small-workload mode, and the GPU
#                 check's dry run on the CPU
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ucdir-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test lint pairs unit unit-matrix nbmake book-smoke book check-rendered bench clean \
        gpu-check gpu-check-dry

install: $(STAMP)
$(STAMP): pyproject.toml constraints-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-ci.txt torch torchvision
	$(PY) -m pip install -q -c constraints-ci.txt -e '.[dev,book]'
	touch $@

test: lint pairs unit-matrix nbmake book-smoke gpu-check-dry

lint: install
	$(VENV)/bin/ruff check .

pairs: install
	$(PY) tools/check_pairs.py

unit: install
	$(VENV)/bin/pytest tests

# The unit suite on 1 and 2 threads, each with the CPU's own kernels and with AVX2 kernels only
# (ATen, oneDNN and MKL): a test that passes only on one CPU or thread count fails here.
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
unit-matrix: install
	@set -e; for threads in 1 2; do for isa in default avx2; do \
	  echo "== unit suite: OMP_NUM_THREADS=MKL_NUM_THREADS=$$threads, kernels $$isa"; \
	  if [ $$isa = avx2 ]; then isa_env="$(AVX2)"; else isa_env=; fi; \
	  env OMP_NUM_THREADS=$$threads MKL_NUM_THREADS=$$threads $$isa_env $(PY) tools/cpu_info.py; \
	  env OMP_NUM_THREADS=$$threads MKL_NUM_THREADS=$$threads $$isa_env $(VENV)/bin/pytest tests; \
	done; done

nbmake: install
	UCDIR_SMOKE=1 $(VENV)/bin/pytest --nbmake --nbmake-kernel=python3 notebooks/

book-smoke: install
	UCDIR_SMOKE=1 $(PY) tools/build_book.py --smoke

book: install
	$(PY) tools/build_book.py

# The GPU check (bench/gpu_check.py): on a GPU machine; CI runs its dry run on the CPU.
gpu-check: install
	$(PY) bench/gpu_check.py

gpu-check-dry: install
	$(PY) bench/gpu_check.py --dry-run

check-rendered: install
	$(PY) tools/render_check.py

clean:
	rm -rf _build .pytest_cache
