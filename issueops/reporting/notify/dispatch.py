"""Send one notification to every channel, retrying passing trouble; never fail the run.

Channels are tried concurrently so that a webhook that hangs does not hold back the others.
Each delivery is retried with exponential backoff and jitter when the failure is transient
(timeout, refused connection, 5xx, 429 after its Retry-After), then reported, never raised.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from issueops.logs import mask
from issueops.reporting.notify.channels import Channel, DeliveryError, NothingToSend
from issueops.reporting.notify.messages import Notification

log = logging.getLogger("issueops.reporting.notify")

ATTEMPTS = 3
BASE_DELAY = 1.0
MAX_DELAY = 30.0
# A Retry-After longer than this is not waited for: the delivery is reported failed instead.
MAX_RETRY_AFTER = 60.0


@dataclass
class Delivery:
    """What happened on one channel."""

    channel: str
    status: str  # ok | failed | skipped
    attempts: int
    error: str | None = None
    link: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class DeliveryReport:
    """Per-channel outcome of one notification; errors are short, human and masked."""

    type: str
    run_id: str | None
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.deliveries)

    @property
    def failed(self) -> list[Delivery]:
        return [d for d in self.deliveries if not d.ok]

    def __getitem__(self, channel: str) -> Delivery:
        for delivery in self.deliveries:
            if delivery.channel == channel:
                return delivery
        raise KeyError(channel)

    def summary(self) -> str:
        """One line per channel, fit for a log, a CLI or an issue comment."""
        lines = []
        for d in self.deliveries:
            tries = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
            if d.status == "ok":
                lines.append(f"{d.channel}: delivered ({tries})")
            elif d.status == "skipped":
                lines.append(f"{d.channel}: skipped ({d.error})")
            else:
                lines.append(f"{d.channel}: FAILED after {tries}: {d.error}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "run_id": self.run_id, "ok": self.ok,
                "deliveries": [asdict(d) for d in self.deliveries]}  # fmt: skip


def notify(
    notification: Notification,
    channels: Sequence[Channel],
    *,
    attempts: int = ATTEMPTS,
    base_delay: float = BASE_DELAY,
    max_delay: float = MAX_DELAY,
    max_retry_after: float = MAX_RETRY_AFTER,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryReport:
    """Deliver `notification` on every channel and report how each went. Never raises."""
    report = DeliveryReport(type=str(notification.type), run_id=notification.run_id)
    if not channels:
        return report

    def deliver(channel: Channel) -> Delivery:
        return _deliver(notification, channel, attempts, base_delay, max_delay, max_retry_after, sleep)

    with ThreadPoolExecutor(max_workers=min(len(channels), 8), thread_name_prefix="notify") as pool:
        futures = [pool.submit(deliver, channel) for channel in channels]
        for channel, future in zip(channels, futures, strict=True):
            try:
                report.deliveries.append(future.result())
            except Exception as exc:  # _deliver catches everything; this is the last guard
                name = getattr(channel, "name", type(channel).__name__)
                report.deliveries.append(Delivery(name, "failed", 0, mask(str(exc))))
    for d in report.failed:
        log.warning("notification %s not delivered on %s: %s", report.type, d.channel, d.error)
    return report


def _deliver(
    notification: Notification,
    channel: Channel,
    attempts: int,
    base_delay: float,
    max_delay: float,
    max_retry_after: float,
    sleep: Callable[[float], None],
) -> Delivery:
    name = getattr(channel, "name", type(channel).__name__)
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            link = channel.send(notification)
        except NothingToSend as exc:
            return Delivery(name, "skipped", attempt, str(exc), seconds=time.monotonic() - started)
        except DeliveryError as exc:
            error, transient, retry_after = str(exc), exc.transient, exc.retry_after
        except Exception as exc:
            # A bug in rendering or in an injected callable: report it, do not retry it.
            log.debug("notify: %s raised", name, exc_info=True)
            error, transient, retry_after = f"{type(exc).__name__}: {mask(str(exc))}", False, None
        else:
            log.info("notification %s delivered on %s", notification.type, name)
            return Delivery(name, "ok", attempt, link=link, seconds=time.monotonic() - started)

        error = mask(error)
        if retry_after is not None and retry_after > max_retry_after:
            error += f" (Retry-After {retry_after:g} s is longer than {max_retry_after:g} s)"
            transient = False
        if not transient or attempt >= attempts:
            return Delivery(name, "failed", attempt, error, seconds=time.monotonic() - started)
        if retry_after is not None:
            delay = retry_after
        else:
            # Exponential backoff with "equal jitter": never zero, never in lockstep.
            ceiling = min(max_delay, base_delay * 2 ** (attempt - 1))
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        log.info(
            "notify: %s attempt %d/%d failed (%s); retrying in %.2f s",
            name, attempt, attempts, error, delay,
        )  # fmt: skip
        sleep(delay)
