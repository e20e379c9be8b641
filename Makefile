# issueops — the commands a user and CI run. `make setup && make test` from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test test-all lint format run serve bench compile cluster-build cluster-up cluster-down kind-up deploy e2e clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# torch is installed first and pinned at 2.13.0: PyPI serves it as the CUDA build (several GB), which runs on the CPU.
# tests.octokit: GitHub's OpenAPI description, webhook schemas and example deliveries (npm pack of
# pinned versions into .cache/octokit, nothing when there; without npm it says so and goes on).
setup: $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip check
	$(BIN)/python -m tests.octokit

# The cluster tests run against a real API server built from Go (tests/controlplane, cached in
# .cluster/bin); without Go they are skipped and the reason is printed.
test: cluster-build
	$(BIN)/python -m pytest -q -m "not gpu and not slow"

test-all: cluster-build  # also the slow tests; gpu tests need CUDA and TensorRT
	$(BIN)/python -m pytest -q -m "not gpu"

lint:
	$(BIN)/ruff check issueops components pipelines operator tests
	$(BIN)/ruff format --check issueops components pipelines operator tests

format:
	$(BIN)/ruff format issueops components pipelines operator tests
	$(BIN)/ruff check --fix issueops components pipelines operator tests

run:
	$(BIN)/issueops run examples/random_forest_classification.yaml

serve:  # the local V2 endpoint (HTTP 8000, gRPC 8001) for every production model
	$(BIN)/issueops serve

compile:
	$(BIN)/issueops compile -o build

bench:  # all entries; `make bench BENCH="pipeline webhook"` for some
	$(BIN)/python -m benchmarks $(BENCH)

cluster-build:  # etcd, kube-apiserver, kube-controller-manager, kubectl -> .cluster/bin (nothing if up to date)
	-$(BIN)/python -m tests.controlplane build

cluster-up:  # a loopback control plane; KUBECONFIG=.cluster/kubeconfig, PATH=.cluster/bin:$$PATH
	$(BIN)/python -m tests.controlplane up

cluster-down:
	$(BIN)/python -m tests.controlplane down

KIND_CLUSTER    ?= issueops
IMAGE           ?= ghcr.io/issueops/issueops:0.1.0
COMPONENT_IMAGE ?= ghcr.io/issueops/issueops-components:0.1.0

kind-up:  # a local cluster with both images loaded (needs Docker and kind)
	kind create cluster --name $(KIND_CLUSTER) --wait 120s
	docker build -t $(IMAGE) .
	docker build -f Dockerfile.components -t $(COMPONENT_IMAGE) .
	kind load docker-image --name $(KIND_CLUSTER) $(IMAGE) $(COMPONENT_IMAGE)

deploy:  # namespace, CRD, RBAC, operator, bridge; create the issueops-github Secret first
	kubectl apply --server-side -k manifests/
	@kubectl -n issueops get secret issueops-github >/dev/null 2>&1 || { echo "create the issueops-github Secret (keys token, webhook-secret): see manifests/kustomization.yaml" >&2; exit 1; }
	kubectl -n issueops rollout status deployment/issueops-operator --timeout=180s
	kubectl -n issueops rollout status deployment/issueops-bridge --timeout=180s

e2e: cluster-build  # the cluster tests alone, against a loopback control plane (tests/controlplane)
	$(BIN)/python -m pytest -q -m cluster

clean:
	rm -rf build .issueops .pytest_cache
