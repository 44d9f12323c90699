"""Prometheus metrics of local actions, on the gateway's registry (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

_P = "homeedge_gateway_actions"


class ActionMetrics:
    """Counters by rule, action (mqtt command, notify topic, webhook) and outcome."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.outcomes = Counter(
            _P,
            "what became of a rule's actions, by rule, action (mqtt: its command; notify: the "
            "notify topic; webhook) and outcome: sent (MQTT: queued on the gateway's session; "
            "webhook: answered 2xx), failed (webhook: refused or given up after max_attempts), "
            "dropped (a full queue), rate_limited, quiet (a notification in quiet hours)",
            ["rule", "action", "outcome"],
            registry=r,
        )
        self.webhook_retries = Counter(
            f"{_P}_webhook_retries",
            "webhook requests retried (a 5xx, 408, 429, a timeout or no connection)",
            ["rule"],
            registry=r,
        )
        self.events = Counter(f"{_P}_events", "inference events the rules looked at", registry=r)
        self._children: dict[tuple[str, str, str], Counter] = {}

    def series(self, rule: str, action: str, outcome: str) -> Counter:
        """The counter of one (rule, action, outcome), made at 0 the first time."""
        key = (rule, action, outcome)
        child = self._children.get(key)
        if child is None:  # labels() takes a lock and builds a tuple: once per series
            child = self._children[key] = self.outcomes.labels(rule, action, outcome)
        return child

    def count(self, rule: str, action: str, outcome: str) -> None:
        self.series(rule, action, outcome).inc()

    def value(self, rule: str, action: str, outcome: str) -> float:
        """The counter's current value (tests, health)."""
        labels = {"rule": rule, "action": action, "outcome": outcome}
        return self.registry.get_sample_value(f"{_P}_total", labels) or 0.0
