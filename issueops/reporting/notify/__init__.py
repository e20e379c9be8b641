"""Notifications: tell the issue, the team chat and the inbox how a run ended.

channels = channels_from_env(post_comment=github.post_comment)
report = notify(Notification.from_result(result), channels)   # never raises
"""
