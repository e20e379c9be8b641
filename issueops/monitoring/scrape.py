"""An endpoint's /metrics read back: the issueops series it exports (issueops.monitoring.metrics),
parsed with prometheus_client's own parser, as the MCP server's `get_endpoint_metrics` returns them."""

from __future__ import annotations

from dataclasses import dataclass, field

from issueops.errors import ExternalServiceError

PREFIX = "issueops_"


@dataclass
class Sample:
    name: str  # the sample's own name: issueops_step_duration_seconds_bucket, ..._count, ..._sum
    labels: dict[str, str]
    value: float


@dataclass
class Series:
    name: str  # the family: issueops_inference_requests (a counter's name without _total)
    type: str  # counter | gauge | histogram | ...
    help: str
    samples: list[Sample] = field(default_factory=list)


@dataclass
class EndpointMetrics:
    url: str
    series: list[Series]

    def value(self, sample: str, **labels: str) -> float | None:
        """One sample's value (None when the endpoint does not export it)."""
        for family in self.series:
            for found in family.samples:
                if found.name == sample and found.labels == labels:
                    return found.value
        return None


def endpoint_metrics(base_url: str, *, timeout: float = 10.0) -> EndpointMetrics:
    """GET <base_url>/metrics and keep the issueops series; an endpoint that does not answer, or not
    with Prometheus text, is an ExternalServiceError that says where it looked."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    url = f"{base_url.rstrip('/')}/metrics"
    try:
        answer = httpx.get(url, timeout=timeout, headers={"Accept": "text/plain"})
    except httpx.HTTPError as error:
        raise ExternalServiceError(
            f"Nothing answered at {url} ({type(error).__name__}): is `issueops serve` running there? "
            "ISSUEOPS_SERVE_URL names its address.",
            transient=True,
        ) from None
    if answer.status_code != 200:
        raise ExternalServiceError(f"{url} answered HTTP {answer.status_code}.", status=answer.status_code)
    try:
        families = list(text_string_to_metric_families(answer.text))
    except ValueError as error:
        raise ExternalServiceError(
            f"{url} did not answer with Prometheus metrics: {str(error)[:200]}."
        ) from None
    return EndpointMetrics(
        url,
        [
            Series(
                family.name,
                family.type,
                family.documentation,
                [Sample(s.name, dict(s.labels), float(s.value)) for s in family.samples],
            )
            for family in families
            if family.name.startswith(PREFIX)
        ],
    )
