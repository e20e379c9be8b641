# issueops — the commands a user and CI run. `make setup && make test` from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test test-all lint format run serve bench compile kind-up deploy e2e clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# torch is installed first and pinned: 2.13.0 is the CPU wheel; any other request pulls CUDA builds.
setup: $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip check

test:
	$(BIN)/python -m pytest -q

test-all:  # includes slow tests; cluster and gpu tests run when KUBECONFIG / a GPU are present
	$(BIN)/python -m pytest -q -m "not cluster and not gpu"

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

e2e:  # cluster-marked tests against the current kubectl context (after kind-up and deploy)
	KUBECONFIG=$${KUBECONFIG:-$$HOME/.kube/config} $(BIN)/python -m pytest -q -m cluster tests/test_cluster.py

clean:
	rm -rf build .issueops .pytest_cache
