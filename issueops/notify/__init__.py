"""Notifications: tell the issue, the team chat and the inbox how a run ended.

channels = channels_from_env(post_comment=github.post_comment)
report = notify(Notification.from_result(result), channels)   # never raises
"""

from issueops.notify.channels import (
    Channel,
    ConsoleChannel,
    DeliveryError,
    DiscordChannel,
    EmailChannel,
    GitHubCommentChannel,
    NothingToSend,
    SlackChannel,
    TeamsChannel,
    WebhookChannel,
    channels_from_env,
)
from issueops.notify.dispatch import Delivery, DeliveryReport, notify
from issueops.notify.messages import (
    Notification,
    NotificationType,
    discord_payload,
    render_html,
    render_markdown,
    render_text,
    slack_payload,
    teams_payload,
)

__all__ = [
    "Channel",
    "ConsoleChannel",
    "Delivery",
    "DeliveryError",
    "DeliveryReport",
    "DiscordChannel",
    "EmailChannel",
    "GitHubCommentChannel",
    "NothingToSend",
    "Notification",
    "NotificationType",
    "SlackChannel",
    "TeamsChannel",
    "WebhookChannel",
    "channels_from_env",
    "discord_payload",
    "notify",
    "render_html",
    "render_markdown",
    "render_text",
    "slack_payload",
    "teams_payload",
]
