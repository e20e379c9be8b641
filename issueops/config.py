"""Settings, read once from the environment (Kubernetes Secrets arrive as environment variables).

Every secret read here is registered with the log masker before it can be logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from issueops.errors import InvalidInput
from issueops.logs import register_secret

SECRET_ENV_NAMES = (
    "GITHUB_TOKEN",
    "GITHUB_WEBHOOK_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "ISSUEOPS_SLACK_WEBHOOK_URL",
    "ISSUEOPS_TEAMS_WEBHOOK_URL",
    "ISSUEOPS_DISCORD_WEBHOOK_URL",
    "ISSUEOPS_SMTP_PASSWORD",
)


DEFAULT_SERVE_URL = "http://127.0.0.1:8000"


def payload_sample_rate(value: str | float | None) -> float:
    """ISSUEOPS_PAYLOAD_LOG as a fraction of requests to log: unset = 1.0, 0 = off."""
    if value is None or value == "":
        return 1.0
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"ISSUEOPS_PAYLOAD_LOG is {str(value)[:40]!r}; give the fraction of requests to log, "
            "from 0 (off) to 1 (all)."
        ) from None
    if not 0.0 <= rate <= 1.0:
        raise InvalidInput(f"ISSUEOPS_PAYLOAD_LOG is {rate:g}; it is a fraction from 0 (off) to 1 (all).")
    return rate


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(_env(name, str(default))))
    except ValueError:
        return default


def _port(name: str, default: int) -> int:
    raw = _env(name, str(default))
    if not raw.isdigit() or int(raw) > 65535:
        raise InvalidInput(f"{name} must be a TCP port (0 to 65535), got {raw!r}.")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    home: Path
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    mlflow_tracking_uri: str = ""
    history_repo: Path | None = None
    data_roots: tuple[Path, ...] = field(default_factory=tuple)
    github_token: str | None = None
    github_repository: str | None = None
    github_api_url: str = "https://api.github.com"
    manual_approval: bool = False
    registry_lock: str = "auto"  # auto | file | lease: how changes to one model are serialised
    registry_lock_wait_s: float = 120.0
    namespace: str = "issueops"
    serving: str = "local"  # ISSUEOPS_SERVING: local (`issueops serve`) or kserve (an InferenceService per model)
    in_cluster: bool = False
    payload_log: str | None = None  # ISSUEOPS_PAYLOAD_LOG as given: `issueops serve` checks it
    serve_url: str = DEFAULT_SERVE_URL  # ISSUEOPS_SERVE_URL: where `issueops serve` answers
    actor: str | None = None  # ISSUEOPS_ACTOR: who a CLI or MCP change is made by (a GitHub login)
    operator_metrics_port: int = 9090  # ISSUEOPS_OPERATOR_METRICS_PORT: the operator's /metrics (0: none)
    log_json: bool = False  # ISSUEOPS_LOG_JSON: JSON log lines (issueops.logs)

    @property
    def payload_log_rate(self) -> float:
        """The share of inferences `issueops serve` logs (0 to 1, default 1); InvalidInput for
        anything else."""
        return payload_sample_rate(self.payload_log)

    @classmethod
    def from_env(cls) -> Settings:
        for name in SECRET_ENV_NAMES:
            register_secret(os.environ.get(name))
        home = Path(_env("ISSUEOPS_HOME", "./.issueops")).expanduser().resolve()
        roots = _env("ISSUEOPS_DATA_ROOTS")
        data_roots = (
            tuple(Path(p).expanduser().resolve() for p in roots.split(os.pathsep) if p)
            if roots
            else (Path.cwd().resolve(), home)
        )
        return cls(
            home=home,
            s3_endpoint=_env("ISSUEOPS_S3_ENDPOINT"),
            s3_bucket=_env("ISSUEOPS_S3_BUCKET"),
            s3_prefix=_env("ISSUEOPS_S3_PREFIX", "").strip("/"),
            mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
            history_repo=Path(_env("ISSUEOPS_HISTORY_REPO", str(home / "history"))).expanduser(),
            data_roots=data_roots,
            github_token=_env("GITHUB_TOKEN"),
            github_repository=_env("GITHUB_REPOSITORY"),
            github_api_url=_env("GITHUB_API_URL", "https://api.github.com"),
            manual_approval=_env("ISSUEOPS_MANUAL_APPROVAL", "false").lower() in ("1", "true", "yes"),
            registry_lock=_env("ISSUEOPS_REGISTRY_LOCK", "auto").lower(),
            registry_lock_wait_s=_seconds("ISSUEOPS_REGISTRY_LOCK_WAIT", 120.0),
            namespace=_env("ISSUEOPS_NAMESPACE", "issueops"),
            serving=_env("ISSUEOPS_SERVING", "local").lower(),
            in_cluster=_env("KUBERNETES_SERVICE_HOST") is not None,
            payload_log=_env("ISSUEOPS_PAYLOAD_LOG"),
            serve_url=_env("ISSUEOPS_SERVE_URL", DEFAULT_SERVE_URL).rstrip("/"),
            actor=_env("ISSUEOPS_ACTOR"),
            operator_metrics_port=_port("ISSUEOPS_OPERATOR_METRICS_PORT", 9090),
            log_json=_env("ISSUEOPS_LOG_JSON") is not None,
        )
