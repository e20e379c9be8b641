# syntax=docker/dockerfile:1
# The operator and bridge image (ghcr.io/issueops/issueops):
#   kopf run --standalone --namespace=issueops /app/operator/issueops_operator.py
#   issueops bridge serve --host 0.0.0.0 --port 8080
# Lean on purpose: no torch, Ray or xgboost. Training runs in the component image
# (Dockerfile.components) as Kubeflow Pipelines steps; this image only submits and follows runs.
#   docker build -t ghcr.io/issueops/issueops:0.1.0 .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    ISSUEOPS_HOME=/var/lib/issueops

WORKDIR /app

# What the operator and the bridge import: kopf and the Kubernetes client, the KFP client (it pins
# the kubernetes client), GitHub, the webhook server, the object store, and the MLflow client for
# the rollback a failed request may still need.
RUN pip install \
      "kopf==1.45.*" "kfp==2.17.*" kfp-kubernetes kubernetes \
      "PyGithub==2.10.*" httpx aiohttp pyyaml boto3 "mlflow==3.17.*"

COPY pyproject.toml README.md ./
COPY issueops ./issueops
COPY components ./components
COPY pipelines ./pipelines
COPY operator ./operator
RUN pip install --no-deps . \
 && mkdir -p /var/lib/issueops \
 && chown 10001:10001 /var/lib/issueops

# Non-root, matching the Deployments' securityContext (runAsUser 10001, read-only root filesystem:
# ISSUEOPS_HOME and /tmp are volumes there).
USER 10001:10001
EXPOSE 8080
CMD ["issueops", "bridge", "serve", "--host", "0.0.0.0", "--port", "8080"]
