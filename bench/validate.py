"""Decode + validate cost of one message, per payload kind (prints microseconds per message).

python bench/validate.py [--json]
"""

from __future__ import annotations

import argparse
import json
import timeit

import numpy as np

from schemas.audio import decode_audio_frame, encode_audio_frame
from schemas.telemetry import decode_telemetry, encode_telemetry
from schemas.topics import parse_device_topic


def per_call_us(fn: object, number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    telemetry = encode_telemetry(1764403200.25, {"temperature": 21.5, "humidity": 40.1}, seq=7)
    frame = encode_audio_frame(1764403200.0, 1, np.zeros(8000, dtype=np.int16))
    topic = "homeedge/home-1/kitchen/thermostat-1/telemetry"
    figures = {
        "telemetry_decode_us": per_call_us(lambda: decode_telemetry(telemetry), 100_000),
        "audio_frame_decode_us": per_call_us(lambda: decode_audio_frame(frame), 100_000),
        "topic_parse_us": per_call_us(lambda: parse_device_topic(topic), 100_000),
        "telemetry_bytes": len(telemetry),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>24}: {value:.2f}")


if __name__ == "__main__":
    main()
