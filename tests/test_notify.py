"""Notifications against real loopback servers: an HTTP webhook receiver and aiosmtpd."""

from __future__ import annotations

import json
import logging
import ssl
import sys

import pytest

from issueops.errors import ExternalServiceError, InvalidInput
from issueops.reporting.notify.channels import (
    ConsoleChannel,
    DiscordChannel,
    EmailChannel,
    GitHubCommentChannel,
    SlackChannel,
    TeamsChannel,
    channels_from_env,
)
from issueops.reporting.notify.dispatch import notify
from issueops.reporting.notify.messages import Notification, NotificationType, render_markdown
from issueops.results import RunResult
from tests.notify_servers import Reply, SmtpServer, WebhookReceiver, closed_port, self_signed_cert

SLACK_PATH = "/services/T0001/B0002/slack-s3cret-token-111"
TEAMS_PATH = "/workflows/9f1c/triggers/manual/paths/invoke?sig=teams-s3cret-sig-222"
DISCORD_PATH = "/api/webhooks/1234/discord-s3cret-token-333"
SMTP_USER = "mlops-bot"
SMTP_PASSWORD = "smtp-pa55word-444"
FAST = {"base_delay": 0.01}


@pytest.fixture
def receiver():
    with WebhookReceiver() as server:
        yield server


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp(cert):
    with SmtpServer(*cert, user=SMTP_USER, password=SMTP_PASSWORD) as server:
        yield server


@pytest.fixture
def result() -> RunResult:
    return RunResult(
        run_id="run-20260101-abc123",
        spec={"algorithm": "random_forest", "dataset_id": "sklearn:breast_cancer"},
        decision="pass",
        message="accuracy 0.9561 meets the threshold 0.85.",
        evaluation_metric="accuracy",
        threshold=0.85,
        metric_value=0.95614,
        metrics={"accuracy": 0.95614, "f1": 0.9655, "confusion_matrix": [[40, 3], [2, 69]]},
        issue=42,
        repository="acme/models",
        model_name="breast-cancer-rf",
        model_version="3",
        alias="production",
        endpoint="http://127.0.0.1:8080/v2/models/breast-cancer-rf",
        finished_at="2026-01-01T12:00:00+00:00",
    )


def smtp_env(smtp: SmtpServer, password: str = SMTP_PASSWORD) -> dict[str, str]:
    return {
        "ISSUEOPS_SMTP_HOST": "127.0.0.1",
        "ISSUEOPS_SMTP_PORT": str(smtp.port),
        "ISSUEOPS_SMTP_USER": SMTP_USER,
        "ISSUEOPS_SMTP_PASSWORD": password,
        "ISSUEOPS_SMTP_FROM": "issueops@example.org",
        "ISSUEOPS_SMTP_TO": "ml-team@example.org, oncall@example.org",
    }


def test_from_result_picks_the_type_from_the_decision_and_renders_markdown(result):
    success = Notification.from_result(result)
    assert success.type is NotificationType.TRAINING_SUCCESS
    assert success.title == ("Training succeeded: breast-cancer-rf on sklearn:breast_cancer (issue #42)")
    assert success.links["Issue"] == "https://github.com/acme/models/issues/42"
    assert success.links["Endpoint"] == result.endpoint
    facts = dict(success.facts())
    assert next(iter(facts)) == "accuracy"
    assert facts["accuracy"] == "0.9561 (threshold 0.85)"
    assert facts["model"] == "breast-cancer-rf v3 (production)"
    assert "confusion_matrix" not in facts  # not a scalar: left to the history file

    result.decision = "retrain"
    assert Notification.from_result(result).type is NotificationType.RETRAIN_REQUIRED
    result.decision = "fail"
    assert Notification.from_result(result).type is NotificationType.TRAINING_FAILED
    rolled = Notification.from_result(result, type="rolled_back")
    assert rolled.type is NotificationType.ROLLED_BACK
    assert rolled.title.startswith("Production model rolled back")

    markdown = render_markdown(success)
    assert "<!-- issueops:notification type=training_success run=run-20260101-abc123 -->" in markdown
    assert "| accuracy | 0.9561 (threshold 0.85) |" in markdown
    assert "[Issue](https://github.com/acme/models/issues/42)" in markdown


def test_slack_teams_discord_receive_their_documented_shapes(receiver, result):
    env = {
        "ISSUEOPS_SLACK_WEBHOOK_URL": receiver.url(SLACK_PATH),
        "ISSUEOPS_TEAMS_WEBHOOK_URL": receiver.url(TEAMS_PATH),
        "ISSUEOPS_DISCORD_WEBHOOK_URL": receiver.url(DISCORD_PATH),
    }
    channels = channels_from_env(env)
    assert [c.name for c in channels] == ["console", "slack", "teams", "discord"]

    report = notify(Notification.from_result(result), channels, **FAST)

    assert report.ok, report.summary()
    assert [(d.channel, d.status, d.attempts) for d in report.deliveries] == [
        ("console", "ok", 1), ("slack", "ok", 1), ("teams", "ok", 1), ("discord", "ok", 1),
    ]  # fmt: skip
    for path in (SLACK_PATH, TEAMS_PATH, DISCORD_PATH):
        (post,) = receiver.posts(path)
        assert post.headers["Content-Type"] == "application/json"

    slack = receiver.posts(SLACK_PATH)[0].json
    assert "Training succeeded" in slack["text"]
    assert slack["blocks"][0]["type"] == "header"
    assert slack["blocks"][0]["text"]["type"] == "plain_text"
    sections = [b for b in slack["blocks"] if b["type"] == "section"]
    assert sections[0]["text"]["text"] == "accuracy 0.9561 meets the threshold 0.85."
    fields = [f["text"] for s in sections for f in s.get("fields", [])]
    assert "*accuracy*\n0.9561 (threshold 0.85)" in fields
    context = [b for b in slack["blocks"] if b["type"] == "context"][0]
    assert "<https://github.com/acme/models/issues/42|Issue>" in [e["text"] for e in context["elements"]]

    teams = receiver.posts(TEAMS_PATH)[0].json
    assert teams["type"] == "message"
    attachment = teams["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert tuple(int(p) for p in card["version"].split(".")) >= (1, 4)
    assert card["body"][0]["type"] == "TextBlock" and "Training succeeded" in card["body"][0]["text"]
    (factset,) = [b for b in card["body"] if b["type"] == "FactSet"]
    assert {"title": "accuracy", "value": "0.9561 (threshold 0.85)"} in factset["facts"]
    assert {"type": "Action.OpenUrl", "title": "Issue",
            "url": "https://github.com/acme/models/issues/42"} in card["actions"]  # fmt: skip

    discord = receiver.posts(DISCORD_PATH)[0].json
    assert discord["allowed_mentions"] == {"parse": []}
    (embed,) = discord["embeds"]
    assert "Training succeeded" in embed["title"]
    assert embed["description"].startswith("accuracy 0.9561 meets the threshold 0.85.")
    assert {"name": "accuracy", "value": "0.9561 (threshold 0.85)", "inline": True} in embed["fields"]
    assert embed["timestamp"] == "2026-01-01T12:00:00+00:00"
    assert embed["color"] == 0x2EB67D
    assert embed["url"] == "https://github.com/acme/models/issues/42"


def test_very_long_messages_are_cut_to_discord_and_slack_limits(receiver):
    huge = Notification(
        type="training_failed",
        title="T" * 1000,
        message="start of the message " + "x" * 20000,
        run_id="run-long",
        metrics={f"metric_{i}_" + "n" * 300: "v" * 2000 for i in range(60)},
    )
    channels = [
        DiscordChannel(receiver.url("/discord")),
        SlackChannel(receiver.url("/slack")),
    ]
    report = notify(huge, channels, **FAST)
    assert report.ok, report.summary()

    (embed,) = receiver.posts("/discord")[0].json["embeds"]
    assert len(embed["title"]) <= 256
    assert len(embed["description"]) <= 4096
    assert embed["description"].startswith("start of the message xxx")
    assert embed["description"].endswith("\u2026")
    assert 0 < len(embed["fields"]) <= 25
    assert all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in embed["fields"])
    total = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000

    blocks = receiver.posts("/slack")[0].json["blocks"]
    assert len(blocks[0]["text"]["text"]) <= 150
    for block in blocks:
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
    assert len(blocks) <= 50


def test_email_is_sent_over_starttls_with_login_as_text_and_html(smtp, cert, result, monkeypatch):
    # The configured channel trusts the system store; point it at the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    channels = channels_from_env(smtp_env(smtp), console=False)
    assert [c.name for c in channels] == ["email"]

    report = notify(Notification.from_result(result), channels, **FAST)

    assert report.ok, report.summary()
    (mail,) = smtp.messages
    assert mail.tls and mail.login == SMTP_USER
    assert mail.mail_from == "issueops@example.org"
    assert mail.rcpt_tos == ["ml-team@example.org", "oncall@example.org"]
    msg = mail.message
    assert msg["Subject"] == (
        "[issueops] Training succeeded: breast-cancer-rf on sklearn:breast_cancer (issue #42)"
    )
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "accuracy 0.9561 meets the threshold 0.85." in text
    assert "0.9561 (threshold 0.85)" in text
    assert "<table>" in html and "0.9561 (threshold 0.85)" in html
    assert 'href="https://github.com/acme/models/issues/42"' in html


def test_email_refused_login_is_reported_not_raised_and_password_stays_hidden(
    smtp, cert, result, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-smtp-password-555"
    email = EmailChannel(
        "127.0.0.1",
        ["ml-team@example.org"],
        "issueops@example.org",
        port=smtp.port,
        user=SMTP_USER,
        password=wrong,
        ssl_context=ssl.create_default_context(cafile=str(cert[0])),
    )

    report = notify(Notification.from_result(result), [ConsoleChannel(), email], **FAST)

    assert report["console"].ok  # the run goes on: the other channels are served
    failed = report["email"]
    assert failed.status == "failed"
    assert failed.attempts == 1  # wrong credentials are not retried (account lockout)
    assert smtp.auth_attempts <= 2  # smtplib tries PLAIN then LOGIN on one connection, once
    assert f"refused the login for {SMTP_USER}: 535" in failed.error
    assert smtp.messages == []
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, report.summary(), json.dumps(report.to_dict())):
        assert wrong not in text


def test_email_without_starttls_cannot_log_in_and_is_reported(smtp, result):
    email = EmailChannel(
        "127.0.0.1", ["a@example.org"], "b@example.org", port=smtp.port,
        user=SMTP_USER, password=SMTP_PASSWORD, starttls=False,
    )  # fmt: skip
    report = notify(Notification.from_result(result), [email], **FAST)
    assert report["email"].status == "failed"
    assert report["email"].attempts == 1
    assert "AUTH" in report["email"].error
    assert smtp.messages == []


def test_5xx_and_timeouts_are_retried_then_reported_and_the_run_goes_on(receiver, result):
    receiver.script("/slack", *[Reply(500, b"internal error")] * 3)
    receiver.script("/discord", *[Reply(delay=3.0)] * 3)
    channels = [
        SlackChannel(receiver.url("/slack")),
        DiscordChannel(receiver.url("/discord"), timeout=0.3),
        TeamsChannel(receiver.url("/teams")),
    ]

    report = notify(Notification.from_result(result), channels, **FAST)

    assert not report.ok
    assert [d.channel for d in report.failed] == ["slack", "discord"]
    slack, discord, teams = report.deliveries
    assert (slack.attempts, discord.attempts, teams.attempts) == (3, 3, 1)
    assert slack.error == "slack webhook answered HTTP 500 Internal Server Error: internal error"
    assert discord.error == "discord webhook timed out after 0.3 s"
    assert teams.status == "ok"
    assert len(receiver.posts("/slack")) == 3
    assert len(receiver.posts("/discord")) == 3
    assert "slack: FAILED after 3 attempts" in report.summary()


def test_a_passing_5xx_is_retried_until_delivered(receiver, result):
    receiver.script("/slack", Reply(503), Reply(502))
    report = notify(Notification.from_result(result), [SlackChannel(receiver.url("/slack"))], **FAST)
    assert report.ok
    assert report["slack"].attempts == 3
    assert len(receiver.posts("/slack")) == 3


def test_429_waits_for_retry_after(receiver, result):
    receiver.script("/slack", Reply(429, b"rate_limited", {"Retry-After": "1"}))
    channel = SlackChannel(receiver.url("/slack"))

    report = notify(Notification.from_result(result), [channel], base_delay=0.001)

    assert report.ok and report["slack"].attempts == 2
    first, second = receiver.posts("/slack")
    assert second.at - first.at >= 0.95  # the backoff alone would have waited ~1 ms


def test_429_with_a_retry_after_beyond_the_limit_is_reported_without_waiting(receiver, result):
    receiver.script("/slack", Reply(429, b"rate_limited", {"Retry-After": "3600"}))
    report = notify(Notification.from_result(result), [SlackChannel(receiver.url("/slack"))], **FAST)
    assert report["slack"].status == "failed" and report["slack"].attempts == 1
    assert "Retry-After 3600 s" in report["slack"].error


def test_client_errors_other_than_429_are_not_retried(receiver, result):
    receiver.script("/slack", Reply(404, b"no_service"))
    report = notify(Notification.from_result(result), [SlackChannel(receiver.url("/slack"))], **FAST)
    assert report["slack"].status == "failed" and report["slack"].attempts == 1
    assert report["slack"].error == "slack webhook answered HTTP 404 Not Found: no_service"
    assert len(receiver.posts("/slack")) == 1


def test_connection_refused_is_retried_then_reported(result):
    channel = TeamsChannel(f"http://127.0.0.1:{closed_port()}/workflows/teams-s3cret")
    report = notify(Notification.from_result(result), [channel], **FAST)
    assert report["teams"].status == "failed" and report["teams"].attempts == 3
    assert report["teams"].error == "teams webhook: connection refused"


def test_secrets_never_appear_in_logs_stderr_or_the_report(
    receiver, smtp, cert, result, caplog, capsys, monkeypatch
):
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))  # so the wrong password reaches the server
    caplog.set_level(logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)  # what `configure_logging` installs in production
    logging.getLogger().addHandler(handler)
    try:
        slack_url = receiver.url(SLACK_PATH)
        # A misbehaving server that echoes the webhook URL back in its error body.
        receiver.script(SLACK_PATH, *[Reply(500, f"bad hook {slack_url}".encode())] * 3)
        receiver.script(DISCORD_PATH, *[Reply(delay=3.0)] * 3)
        env = {
            "ISSUEOPS_SLACK_WEBHOOK_URL": slack_url,
            "ISSUEOPS_TEAMS_WEBHOOK_URL": receiver.url(TEAMS_PATH),
            "ISSUEOPS_DISCORD_WEBHOOK_URL": receiver.url(DISCORD_PATH),
            "ISSUEOPS_NOTIFY_TIMEOUT": "0.3",
            **smtp_env(smtp, password="wr0ng-" + SMTP_PASSWORD),
        }

        def post_comment(issue: int, markdown: str) -> str:
            raise ExternalServiceError(f"GitHub refused {slack_url}", transient=False)

        report = notify(Notification.from_result(result), channels_from_env(env, post_comment), **FAST)
    finally:
        logging.getLogger().removeHandler(handler)

    assert [d.channel for d in report.failed] == ["github", "slack", "discord", "email"]
    assert report["teams"].ok and report["console"].ok
    assert "refused the login" in report["email"].error
    out = capsys.readouterr()
    assert "Training succeeded" in out.err  # the console line went through the handler
    secrets = [
        slack_url, receiver.url(TEAMS_PATH), receiver.url(DISCORD_PATH),
        SLACK_PATH, "slack-s3cret-token-111", "teams-s3cret-sig-222", "discord-s3cret-token-333",
        "wr0ng-" + SMTP_PASSWORD, SMTP_PASSWORD,
    ]  # fmt: skip
    outputs = {
        "caplog": caplog.text,
        "stdout": out.out,
        "stderr": out.err,
        "summary": report.summary(),
        "report": json.dumps(report.to_dict()),
    }
    assert "HTTP 500" in outputs["summary"] and "***" in outputs["summary"]
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {where}"


def test_github_comment_posts_markdown_retries_passing_trouble_and_skips_without_issue(result):
    posted: list[tuple[int, str]] = []
    failures = [ExternalServiceError("GitHub answered 502", transient=True, status=502)]

    def post_comment(issue: int, markdown: str) -> str:
        if failures:
            raise failures.pop()
        posted.append((issue, markdown))
        return f"https://github.com/acme/models/issues/{issue}#issuecomment-1"

    channel = GitHubCommentChannel(post_comment)
    report = notify(Notification.from_result(result), [channel], **FAST)

    assert report["github"].status == "ok" and report["github"].attempts == 2
    assert report["github"].link == "https://github.com/acme/models/issues/42#issuecomment-1"
    ((issue, markdown),) = posted
    assert issue == 42 and "### \u2705 Training succeeded" in markdown

    result.issue = None
    report = notify(Notification.from_result(result), [channel], **FAST)
    assert report.ok and report["github"].status == "skipped"
    assert len(posted) == 1


def test_a_broken_channel_is_reported_and_never_raises(result, caplog):
    class Broken:
        name = "broken"

        def send(self, notification):
            raise RuntimeError("renderer bug")

    caplog.set_level(logging.INFO)
    report = notify(Notification.from_result(result), [Broken(), ConsoleChannel()], **FAST)
    assert report["broken"].error == "RuntimeError: renderer bug"
    assert report["broken"].attempts == 1
    assert report["console"].ok
    assert any(
        r.name == "issueops.reporting.notify"
        and "Training succeeded" in r.getMessage()
        and "f1=0.9655" in r.getMessage()
        for r in caplog.records
    )


def test_channels_from_env_defaults_and_errors():
    assert [type(c) for c in channels_from_env({})] == [ConsoleChannel]
    assert channels_from_env({}, console=False) == []
    assert [c.name for c in channels_from_env({}, post_comment=lambda i, m: None)] == [
        "console",
        "github",
    ]

    (email,) = channels_from_env(
        {
            "ISSUEOPS_SMTP_HOST": "smtp.example.org",
            "ISSUEOPS_SMTP_USER": "bot@example.org",
            "ISSUEOPS_SMTP_TO": "a@example.org,, b@example.org ",
        },
        console=False,
    )
    assert (email.port, email.starttls, email.timeout) == (587, True, 10.0)
    assert email.sender == "bot@example.org"
    assert email.recipients == ["a@example.org", "b@example.org"]

    slack, email = channels_from_env(
        {
            "ISSUEOPS_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
            "ISSUEOPS_NOTIFY_TIMEOUT": "2.5",
            "ISSUEOPS_SMTP_HOST": "smtp.example.org",
            "ISSUEOPS_SMTP_PORT": "2525",
            "ISSUEOPS_SMTP_FROM": "issueops@example.org",
            "ISSUEOPS_SMTP_TO": "a@example.org",
            "ISSUEOPS_SMTP_STARTTLS": "false",
        },
        console=False,
    )
    assert slack.timeout == 2.5 and email.timeout == 2.5
    assert (email.port, email.starttls, email.user) == (2525, False, None)

    with pytest.raises(InvalidInput) as err:
        channels_from_env(
            {
                "ISSUEOPS_DISCORD_WEBHOOK_URL": "discord-s3cret-not-a-url",
                "ISSUEOPS_SMTP_HOST": "smtp.example.org",
                "ISSUEOPS_SMTP_PORT": "smtp",
            }
        )
    assert err.value.problems == [
        "ISSUEOPS_DISCORD_WEBHOOK_URL is not an http(s) URL",
        "ISSUEOPS_SMTP_PORT must be a positive number (a port)",
        "ISSUEOPS_SMTP_FROM is required when ISSUEOPS_SMTP_HOST is set",
        "ISSUEOPS_SMTP_TO is required when ISSUEOPS_SMTP_HOST is set",
    ]
    assert "discord-s3cret" not in str(err.value)
