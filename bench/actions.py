"""Event-loop time local actions take per inference event (`LocalActions.on_event`), which runs
inside the inference results' hand-off: how much of the loop a rule set costs.

    .venv/bin/python bench/actions.py                 # 2 built-in + 0 / 10 / 100 rules
    .venv/bin/python bench/actions.py --rules 0,20 --events 50000 --repeat 5

Each rule set is the two built-in rules plus N keyword rules with an MQTT command (every tenth
matching the events) and one webhook rule; the events are a mix of keywords, alarms and
anomalies over 20 rooms. Publishing is a function that returns True (the real one queues on
paho's outgoing deque); webhook notifications go into the real `WebhookSender` queue (its
sender task does not run, so the queue stays at its bound and drops the oldest, as with a dead
receiver). Prints the median microseconds per event of `--repeat` runs and the load average.
Not measured: paho's own cost of each queued message (network thread), the HTTP requests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from gateway.actions.metrics import ActionMetrics
from gateway.actions.runner import LocalActions
from gateway.actions.settings import ActionsSettings
from gateway.actions.webhook import WebhookSender
from gateway.records import EdgeEvent, EventKind


def settings(n_rules: int) -> ActionsSettings:
    rules: list[dict[str, Any]] = [
        {
            "name": f"light-{i}",
            "kinds": ["keyword"],
            "labels": ["lights_on"],
            "rooms": [f"room-{i % 20}"] if i % 10 == 0 else [f"nowhere-{i}"],
            "rate_limit": {"count": 5, "per_s": 10},
            "mqtt": {"topic": f"zigbee2mqtt/light_{i}/set", "payload": {"state": "ON"}},
        }
        for i in range(n_rules)
    ]
    rules.append({"name": "phone", "kinds": ["alarm"], "webhook": {"url": "http://127.0.0.1:9/"}})
    return ActionsSettings.model_validate({"timezone": "UTC", "rules": rules})


def events(n: int) -> list[EdgeEvent]:
    kinds = [
        (EventKind.KEYWORD, "lights_on"),
        (EventKind.ALARM, "smoke_t3"),
        (EventKind.ANOMALY, "anomaly"),
        (EventKind.ANOMALY, "normal"),
    ]
    out = []
    for i in range(n):
        kind, label = kinds[i % len(kinds)]
        ts = 1_796_317_331.0 + i
        out.append(
            EdgeEvent(kind, str(kind), "home-1", f"room-{i % 20}", f"dev-{i % 50}", label, 0.9,
                      ts - 1, ts, ts)
        )  # fmt: skip
    return out


def run(n_rules: int, n_events: int) -> float:
    cfg = settings(n_rules)
    metrics = ActionMetrics()
    senders = {
        r.name: WebhookSender(r.name, r.webhook, metrics)
        for r in cfg.all_rules()
        if r.webhook is not None
    }
    actions = LocalActions(
        cfg,
        publish=lambda topic, payload, retain=False: True,
        notify_topic="homeedge/gw/gateway/notify",
        metrics=metrics,
        senders=senders,
    )
    evs = events(n_events)
    start = time.perf_counter()
    for e in evs:
        actions.on_event(e)
    return (time.perf_counter() - start) / n_events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default="0,10,100", help="extra rules, comma-separated")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for n in (int(x) for x in args.rules.split(",")):
        times = [run(n, args.events) for _ in range(args.repeat)]
        print(
            f"{n + 3:4d} rules: median {statistics.median(times):7.2f} us/event "
            f"(min {min(times):.2f}, max {max(times):.2f}; {args.repeat} runs of {args.events})"
        )
    print(f"load average at end:   {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
