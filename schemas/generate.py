"""Generate the checked-in JSON Schema files from the payload models.

python -m schemas.generate          # rewrite schemas/json/*.json
python -m schemas.generate --check  # exit 1 when the files drift from the code
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from schemas.batch import Batch
from schemas.events import InferenceEvent
from schemas.notify import Notification
from schemas.telemetry import Telemetry

HERE = Path(__file__).parent / "json"


def clean_descriptions(obj: Any) -> Any:
    """Dedent every ``description`` the same way, whatever msgspec version made the schema.

    msgspec 0.23 dedents docstrings and 0.22 did not; the checked-in files must not depend on it.
    """
    if isinstance(obj, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else clean_descriptions(value)
            for key, value in obj.items()
        }
    if isinstance(obj, list):
        return [clean_descriptions(item) for item in obj]
    return obj


def _dump(obj: object) -> str:
    return json.dumps(clean_descriptions(obj), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated_files() -> dict[Path, str]:
    """File path -> expected content."""
    telemetry = msgspec.json.schema(Telemetry)
    telemetry["$id"] = "https://homeedge.invalid/schemas/telemetry.schema.json"
    telemetry["title"] = "homeedge telemetry payload"
    batch = msgspec.json.schema(Batch)
    batch["$id"] = "https://homeedge.invalid/schemas/batch.schema.json"
    batch["title"] = "homeedge gateway-to-cloud batch"
    state = {
        "$id": "https://homeedge.invalid/schemas/state.schema.json",
        "title": "homeedge availability payload (retained, the last will is offline)",
        "type": "string",
        "enum": ["online", "offline"],
    }
    event = msgspec.json.schema(InferenceEvent)
    event["$id"] = "https://homeedge.invalid/schemas/event.schema.json"
    event["title"] = "homeedge gateway inference event"
    notify = msgspec.json.schema(Notification)
    notify["$id"] = "https://homeedge.invalid/schemas/notify.schema.json"
    notify["title"] = "homeedge gateway notification (local actions)"
    return {
        HERE / "event.schema.json": _dump(event),
        HERE / "notify.schema.json": _dump(notify),
        HERE / "telemetry.schema.json": _dump(telemetry),
        HERE / "batch.schema.json": _dump(batch),
        HERE / "state.schema.json": _dump(state),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when files differ")
    args = parser.parse_args(argv)
    drift = []
    for path, text in generated_files().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            drift.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if args.check and drift:
        print("out of date: " + ", ".join(str(p) for p in drift), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
