"""`EngineStats`: the inference engine's counters, one object shared by its parts and shown
under ``inference`` on ``/healthz``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    audio_frames: int = 0  # frames processed (inference thread)
    readings: int = 0  # sensor readings processed (inference thread)
    dropped: int = 0  # items refused by the full queue (scheduler)
    results: int = 0  # model decisions (result handling)
    events: int = 0  # events handed to the publisher (result handling)
    errors: int = 0  # batches that failed (scheduler)
    batches: int = 0  # batches processed (inference thread)
    rows_written: int = 0  # `inferences` rows stored (result handling)
    evicted_sensors: int = 0  # sensors' state dropped after devices.idle_s (inference thread)
    evicted_microphones: int = 0  # microphones' state dropped likewise
    windows_closed_by_time: int = 0  # sensor windows closed by sensor_grace_s (inference thread)
    baselines_restored: int = 0  # sensor baselines resumed from SQLite or an evicted copy
    baselines_discarded: int = 0  # stored baselines refused (format, window_s): learned again
    baselines_written: int = 0  # baseline rows written by save rounds (result handling)
    baselines_persisted: int = 0  # rows in sensor_baselines after the last round (or at start)
    swaps: int = 0  # model sets swapped in while running (gateway.updates)
    speech_embedding_loads: int = 0  # speech-embedding sessions loaded (first utterance, reloads)
    speech_embedding_releases: int = 0  # ... dropped after speech_idle_release_s unused


@dataclass(frozen=True)
class ModelStatus:
    """The running model set as a bundle's soak judges it (`gateway.updates`)."""

    models: dict[str, str]  # name -> manifest version
    load_errors: list[str]
    errors: int  # inference batches that failed, since start
    dropped: int  # items the engine's full queue dropped (audio frames), since start
