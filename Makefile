# kpms-job: `make help` lists the targets.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help runtime setup test test-fast test-all lint docs demo apply-demo clean image sif container-test cluster-test lock

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

runtime: $(VENV)/.runtime  ## create .venv with what kpms-job needs to run (requirements.lock): no test tools

$(VENV)/.runtime: requirements.lock pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need Python 3.11 ($(PY))"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed  ## runtime, plus the tests and linters (requirements-dev.lock)

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.lock
	$(BIN)/pip install -q --require-hashes -r requirements.lock -r requirements-dev.lock
	touch $@

test: setup  ## the import contracts (lint-imports), then the whole test suite (what CI runs)
	$(BIN)/lint-imports
	$(BIN)/pytest -q

test-fast: setup  ## the import contracts and the quick tests (unit and adapter, no pipeline runs): about a minute
	$(BIN)/lint-imports
	$(BIN)/pytest -q -m "not slow" tests/unit tests/kpms

lint: setup  ## ruff, the import contracts (lint-imports, pyproject.toml), and hadolint on the Dockerfile
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

docs: runtime  ## regenerate docs/manifest.md (the manifest reference) from the schemas
	$(BIN)/python tools/manifest_docs.py

demo: runtime  ## run the bundled example job (two mice, kappa tuning on: about 5 minutes on 2 cores)
	$(BIN)/kpms-job run examples/manifest.yml

apply-demo: demo  ## apply the example's model to its recordings again (examples/apply.yml), with NWB files
	$(BIN)/kpms-job apply examples/apply.yml

clean:  ## remove the examples' project dirs
	rm -rf examples/project examples/openfield_project

# --- containers and clusters (README: Containers and clusters) ---
IMAGE ?= kpms-job
TAG ?= latest
JAX ?= cuda12
BASE_IMAGE ?=
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo buildah)
BUILD_ARGS = --build-arg JAX=$(JAX) --build-arg VCS_REF=$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	--build-arg IMAGE_NAME=$(IMAGE):$(TAG) \
	$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE))

image:  ## build the image (JAX=cpu for CPU JAX; ENGINE=docker|buildah; BASE_IMAGE=... to replace the base)
ifeq ($(ENGINE),docker)
	docker build $(BUILD_ARGS) -t $(IMAGE):$(TAG) .
else
	buildah bud --format docker --layers --isolation chroot $(BUILD_ARGS) \
		$(if $(wildcard /etc/ssl/certs/ca-certificates.crt),-v /etc/ssl/certs:/etc/ssl/certs:ro) -t $(IMAGE):$(TAG) .
endif

sif: image  ## Apptainer image kpms-job.sif from the image (apptainer.def)
ifeq ($(ENGINE),docker)
	apptainer build --force --notest kpms-job.sif apptainer.def
else
	mkdir -p build
	rm -f build/kpms-job.tar
	buildah push $(IMAGE):$(TAG) docker-archive:build/kpms-job.tar:$(IMAGE):$(TAG)
	sed -e 's|^Bootstrap:.*|Bootstrap: docker-archive|' -e 's|^From:.*|From: build/kpms-job.tar|' \
		apptainer.def > build/apptainer.def
	apptainer build --force --notest kpms-job.sif build/apptainer.def
endif

container-test: setup  ## build the Dockerfile (CPU JAX, local bookworm base) with buildah and run the example in it
	$(BIN)/pytest -m container -v -rs tests/container/test_container.py

cluster-test: setup  ## start a single-node Slurm (root) and run the sbatch script on it, preempted and requeued
	deploy/slurm/ci-cluster.sh
	$(BIN)/pytest -m cluster -v -rs tests/cluster/test_slurm.py

lock: setup  ## re-resolve requirements.lock, requirements-cuda.lock, requirements-dev.lock with uv (hashes)
	$(BIN)/python deploy/make-locks.py
