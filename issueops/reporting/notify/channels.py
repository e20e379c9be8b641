"""Where notifications go: the GitHub issue, Slack, Teams, Discord, email, the console log.

A channel sends once and raises `DeliveryError` on failure, saying whether trying again may help;
retrying, backoff and reporting live in `dispatch`. No error message carries a URL or a password.
"""

from __future__ import annotations

import logging
import math
import smtplib
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from issueops.config import Settings
from issueops.errors import ExternalServiceError, InvalidInput
from issueops.logs import mask, register_secret
from issueops.reporting.notify.messages import (
    Notification,
    discord_payload,
    render_html,
    render_markdown,
    render_text,
    slack_payload,
    teams_payload,
)

log = logging.getLogger("issueops.reporting.notify")

DEFAULT_TIMEOUT = 10.0
DEFAULT_SMTP_PORT = 587


class DeliveryError(ExternalServiceError):
    """A channel could not deliver; `transient` says whether a retry may succeed."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(mask(message), transient=transient, status=status, retry_after=retry_after)


class Channel(Protocol):
    name: str

    def send(self, notification: Notification) -> str | None:
        """Deliver once; return a link to what was posted when there is one."""


class NothingToSend(Exception):
    """The channel has no destination for this notification (a GitHub comment without issue)."""


class ConsoleChannel:
    """Logs one line per notification: the embedded default, always available."""

    name = "console"

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log

    def send(self, notification: Notification) -> str | None:
        facts = ", ".join(f"{k}={v}" for k, v in notification.facts())
        self.logger.info(
            "%s %s: %s%s",
            notification.emoji,
            notification.title,
            notification.message,
            f" [{facts}]" if facts else "",
        )
        return None


class GitHubCommentChannel:
    """Posts the markdown rendering on the run's issue through an injected `post_comment`."""

    name = "github"

    def __init__(self, post_comment: Callable[[int, str], str | None]):
        self.post_comment = post_comment

    def send(self, notification: Notification) -> str | None:
        if notification.issue is None:
            raise NothingToSend("no issue to comment on")
        try:
            return self.post_comment(notification.issue, render_markdown(notification))
        except ExternalServiceError as exc:
            raise DeliveryError(
                f"GitHub comment failed: {exc}", transient=exc.transient, status=exc.status
            ) from None
        except (TimeoutError, ConnectionError, httpx.TransportError) as exc:
            raise DeliveryError(f"GitHub comment failed: {_describe(exc)}", transient=True) from None


class WebhookChannel:
    """POSTs a channel-specific JSON body to a webhook URL with httpx."""

    name = "webhook"
    render: Callable[[Notification], dict[str, Any]]

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT):
        if not url.startswith(("https://", "http://")):
            raise InvalidInput(f"{self.name} webhook URL must start with https://")
        self.url = url
        self.timeout = timeout
        _register_url(url)

    def payload(self, notification: Notification) -> dict[str, Any]:
        return self.render(notification)

    def send(self, notification: Notification) -> str | None:
        body = self.payload(notification)
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                response = client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise DeliveryError(
                f"{self.name} webhook timed out after {self.timeout:g} s", transient=True
            ) from None
        except httpx.TransportError as exc:
            raise DeliveryError(f"{self.name} webhook: {_describe(exc)}", transient=True) from None
        if response.is_success:
            return None
        raise self._error(response)

    def _error(self, response: httpx.Response) -> DeliveryError:
        status = response.status_code
        detail = " ".join(response.text.split())[:200]
        message = f"{self.name} webhook answered HTTP {status} {response.reason_phrase}".rstrip()
        if detail:
            message += f": {detail}"
        retry_after = _retry_after(response.headers.get("Retry-After")) if status == 429 else None
        # 408 and 429 are the 4xx answers that invite a retry; every 5xx may be passing trouble.
        transient = status >= 500 or status in (408, 429)
        return DeliveryError(message, transient=transient, status=status, retry_after=retry_after)


class SlackChannel(WebhookChannel):
    name = "slack"
    render = staticmethod(slack_payload)


class TeamsChannel(WebhookChannel):
    name = "teams"
    render = staticmethod(teams_payload)


class DiscordChannel(WebhookChannel):
    name = "discord"
    render = staticmethod(discord_payload)


class EmailChannel:
    """Sends a multipart/alternative (text + HTML) email over SMTP, STARTTLS and login first."""

    name = "email"

    def __init__(
        self,
        host: str,
        recipients: list[str],
        sender: str,
        *,
        port: int = DEFAULT_SMTP_PORT,
        user: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ):
        if not recipients:
            raise InvalidInput("email channel needs at least one recipient")
        self.host = host
        self.port = port
        self.recipients = list(recipients)
        self.sender = sender
        self.user = user
        self.password = password
        self.starttls = starttls
        self.timeout = timeout
        self.ssl_context = ssl_context
        register_secret(password)

    def message(self, notification: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"[issueops] {notification.title}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="issueops")
        if notification.run_id:
            msg["X-Issueops-Run"] = notification.run_id
        msg.set_content(render_text(notification))
        msg.add_alternative(render_html(notification), subtype="html")
        return msg

    def send(self, notification: Notification) -> str | None:
        msg = self.message(notification)
        where = f"SMTP {self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=self.ssl_context or ssl.create_default_context())
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self.password or "")
                refused = smtp.send_message(msg, to_addrs=self.recipients)
        except smtplib.SMTPAuthenticationError as exc:
            # Wrong credentials do not get better by asking again (and may lock the account).
            raise DeliveryError(
                f"{where} refused the login for {self.user}: {exc.smtp_code} {_smtp_text(exc)}",
                transient=False,
                status=exc.smtp_code,
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                f"{where} refused every recipient: {', '.join(exc.recipients)}", transient=False
            ) from None
        except smtplib.SMTPResponseException as exc:
            # SMTP replies 4xx are temporary by definition (RFC 5321 section 4.2.1), 5xx permanent.
            raise DeliveryError(
                f"{where} answered {exc.smtp_code} {_smtp_text(exc)}",
                transient=400 <= exc.smtp_code < 500,
                status=exc.smtp_code,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc}", transient=False) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"{where} TLS failed: {exc.reason or exc}", transient=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where}: {_describe(exc)}", transient=True) from None
        if refused:
            log.warning("email: %d recipient(s) refused: %s", len(refused), ", ".join(refused))
        return None


def channels_from_env(
    environ: Mapping[str, str] | None = None,
    post_comment: Callable[[int, str], str | None] | None = None,
    *,
    console: bool = True,
) -> list[Channel]:
    """Every channel the settings of `environ` (default: this process's environment) configure,
    console first; secrets are registered for masking.

    Raises `InvalidInput` naming each bad variable (never its value) when the configuration is
    malformed, so that a typo shows at start-up instead of as a silent missing notification.
    """

    settings = Settings.from_env(environ)

    def get(name: str) -> str | None:
        value = (getattr(settings, name) or "").strip()
        return value or None

    for name in ("slack_webhook_url", "teams_webhook_url", "discord_webhook_url", "smtp_password"):
        value = get(name)
        if value and name.endswith("_url"):
            _register_url(value)
        register_secret(value)

    problems: list[str] = []
    timeout = _number(get("notify_timeout"), DEFAULT_TIMEOUT, "ISSUEOPS_NOTIFY_TIMEOUT", problems)
    channels: list[Channel] = [ConsoleChannel()] if console else []
    if post_comment is not None:
        channels.append(GitHubCommentChannel(post_comment))
    for name, cls in (
        ("ISSUEOPS_SLACK_WEBHOOK_URL", SlackChannel),
        ("ISSUEOPS_TEAMS_WEBHOOK_URL", TeamsChannel),
        ("ISSUEOPS_DISCORD_WEBHOOK_URL", DiscordChannel),
    ):
        url = get(name.removeprefix("ISSUEOPS_").lower())
        if url is None:
            continue
        if not url.startswith(("https://", "http://")) or not urlsplit(url).hostname:
            problems.append(f"{name} is not an http(s) URL")
            continue
        channels.append(cls(url, timeout=timeout))

    host = get("smtp_host")
    if host:
        port = int(_number(get("smtp_port"), DEFAULT_SMTP_PORT, "ISSUEOPS_SMTP_PORT", problems))
        user = get("smtp_user")
        sender = get("smtp_from") or (user if user and "@" in user else None)
        recipients = [a.strip() for a in (get("smtp_to") or "").split(",") if a.strip()]
        starttls_text = (get("smtp_starttls") or "true").lower()
        if starttls_text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            problems.append("ISSUEOPS_SMTP_STARTTLS must be true or false")
        if not sender:
            problems.append("ISSUEOPS_SMTP_FROM is required when ISSUEOPS_SMTP_HOST is set")
        if not recipients:
            problems.append("ISSUEOPS_SMTP_TO is required when ISSUEOPS_SMTP_HOST is set")
        if not problems:
            channels.append(
                EmailChannel(
                    host,
                    recipients,
                    sender,
                    port=port,
                    user=user,
                    password=get("smtp_password"),
                    starttls=starttls_text in ("1", "true", "yes", "on"),
                    timeout=timeout,
                )
            )
    if problems:
        raise InvalidInput("notification settings are invalid", problems=problems)
    return channels


def _number(text: str | None, default: float, name: str, problems: list[str]) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    port = name.endswith("PORT")
    if not (0 < value < math.inf) or (port and (value != int(value) or value > 65535)):
        problems.append(f"{name} must be a positive number" + (" (a port)" if port else ""))
        return default
    return value


def _register_url(url: str) -> None:
    """Register the URL and its credential-bearing parts: libraries may log them separately."""
    register_secret(url)
    parts = urlsplit(url)
    if len(parts.path) >= 8:
        register_secret(parts.path)
    if len(parts.query) >= 8:
        register_secret(parts.query)
    if parts.password:
        register_secret(parts.password)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError | httpx.ConnectError) and "refused" in str(exc).lower():
        return "connection refused"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return mask(text)


def _smtp_text(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
    return mask(" ".join(text.split())[:200])
