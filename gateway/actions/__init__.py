"""Local actions (``[actions]``): edge events to MQTT commands and notifications.

- `gateway.actions.settings`: the config section, its defaults and their reasons;
- `gateway.actions.rules`: matching, rate limits, quiet hours, the notification body (pure);
- `gateway.actions.runner`: `LocalActions`, the host's event callback;
- `gateway.actions.webhook`: `WebhookSender`, bounded queue and retries per webhook;
- `gateway.actions.wiring`: `install_actions(host, settings)`.
"""
