# fw-screen: two commands do all set-up on a fresh machine.
#   make demo   - install into .venv, start the embedded database, run the funnel on examples/
#   make test   - install into .venv, run the test suite (real database server, real pymatgen)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-all bench install qe chromium slurm db-stop clean reference-env bench-port

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned to the CPU wheel these machines carry: a bare `torch` requirement (pulled in by
# chgnet/sevenn/matgl) would otherwise fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $(STAMP)

# Quantum ESPRESSO (pw.x 6.7) and its pseudopotential package from Debian, for the DFT stage.
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
qe:
	@command -v pw.x >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq quantum-espresso quantum-espresso-data; }
	@command -v pw.x >/dev/null && echo "pw.x: $$(command -v pw.x)"

# Debian's chromium (and a font it can draw text with), for tests/test_report.py: playwright drives it
# headless to render the HTML report (no browser download: playwright uses this executable).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-dejavu-core; }
	@command -v chromium >/dev/null && echo "chromium: $$(command -v chromium)"

# Debian's SLURM (slurmctld, slurmd, sbatch, ...) and munge, for tests/test_slurm.py: tests/slurm_cluster.py
# writes a slurm.conf for this one host and starts munged/slurmctld/slurmd itself (nothing is enabled here).
# libpmix-dev: slurm's mpi/pmix plugin opens the unversioned libpmix.so; without it `srun pw.x` (Debian's
# Open MPI) fails in MPI_Init ("OMPI was not built with SLURM's PMI support").
slurm:
	@dpkg -s slurm-wlm munge libpmix-dev >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq slurm-wlm munge libpmix-dev; }
	@command -v slurmctld >/dev/null && echo "slurm: $$(slurmd -V)"

install: $(STAMP) qe chromium

demo: $(STAMP) qe
	$(BIN)/fw-screen demo

# two pytest workers, one per core of the CI machine (pytest-xdist); a test file stays on one worker (its
# module fixtures, e.g. the pw.x runs of tests/test_qe.py, are computed once).  TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP) qe chromium slurm
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP) qe chromium slurm
	$(BIN)/python -m pytest tests -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cheap_funnel.py
	$(BIN)/python benchmarks/bench_novelty.py

# The DGL-era matgl (1.2.7 + dgl 2.1.0) the bundled MEGNet / M3GNet checkpoints were trained with, in a
# venv of its own used only by benchmarks/bench_matgl_port.py (never a dependency of fw-screen); --no-deps
# because its packages pin older torch builds (benchmarks/reference_env/README.md)
REF_VENV := .venv-ref
$(REF_VENV)/.installed: benchmarks/reference_env/requirements.txt
	$(PY) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install --quiet --no-deps -r benchmarks/reference_env/requirements.txt
	touch $@

reference-env: $(REF_VENV)/.installed

bench-port: $(STAMP) reference-env
	$(BIN)/python benchmarks/bench_matgl_port.py

db-stop: $(STAMP)
	$(BIN)/fw-screen db stop

clean:
	-$(BIN)/fw-screen db stop
	rm -rf .fw-screen
