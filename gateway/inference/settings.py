"""`InferenceSettings`: the ``[inference]`` section of the gateway config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# Fields earlier releases had, accepted (and ignored, with a warning) so that an existing config
# still starts: what replaced each.
RETIRED = {
    "baseline_windows": "baseline_hours (the baseline spans time now, not a number of windows)",
    "baseline_min_windows": "warmup_hours",
    "discovery_prefix": "[homeassistant] discovery_prefix",
}


class InferenceSettings(BaseModel):
    """Edge inference: which models, how they run, what they publish."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _retired_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in RETIRED):
            data = dict(data)
            for name, instead in RETIRED.items():
                if name in data:
                    data.pop(name)
                    log.warning(
                        "inference.%s is no longer used and is ignored: see %s", name, instead
                    )
        return data

    enabled: bool = Field(default=True, description="run inference at all")
    models_dir: Path = Field(
        default=DEFAULT_MODELS_DIR, description="directory of manifests + .onnx"
    )
    models: list[str] | None = Field(
        default=None, description="model names to load (manifest stems); None loads every manifest"
    )
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per model name ([inference.thresholds.<model>]): thresholds overriding "
        "those of its manifest (only names the manifest has); a bundle's overlay may set them, "
        "and they take effect without a restart",
    )
    priors_file: Path | None = Field(
        default=None,
        description="fleet priors (gateway.inference.priors): a new sensor is scored from its "
        "first window against the fleet's levels for its room class instead of waiting "
        "warmup_hours; a bundle from the cloud that carries priors.json sets it",
    )
    intra_op_threads: int = Field(
        default=1, ge=1, le=16, description="onnxruntime intra-op threads"
    )
    queue_size: int = Field(
        default=4000,
        ge=1,
        description="pending frames/readings; when full, audio frames are dropped (counted) "
        "and readings wait for room (a backlog reaches the models whole)",
    )
    batch_max: int = Field(
        default=256, ge=1, description="most queued items handled per executor call"
    )
    sensor_window_s: float = Field(default=300.0, gt=0, description="tumbling window per device")
    baseline_hours: float = Field(
        default=24.0,
        gt=0,
        le=168,
        description="time the per-device baseline spans (its level and same-time-yesterday "
        "references), whatever the reporting cadence",
    )
    warmup_hours: float = Field(
        default=24.0,
        ge=0,
        le=168,
        description="hours a device must have reported a metric before it is scored",
    )
    relearn_hours: float = Field(
        default=4.0,
        gt=0,
        le=48,
        description="a steady change flagged for this long is adopted as the device's new "
        "level (one level_change result) instead of staying an anomaly",
    )
    sensor_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="a sensor's open window is closed by time once the wall clock is this far "
        "past its end and the device has sent nothing for as long (checked by the engine's "
        "sweep), not only by the device's next reading; a reading that comes later joins the "
        "next window",
    )
    baseline_save_s: float = Field(
        default=3600.0,
        ge=10,
        le=86400,
        description="a sensor's learned baseline is written to SQLite (table sensor_baselines, "
        "through the writer, all changed devices in one transaction) at most this often, and "
        "at a clean shutdown; a kill -9 or power cut loses at most this much learning (the "
        "readings are stored anyway)",
    )
    speech_summary_s: float = Field(
        default=10.0, gt=0, description="VAD results are summed over this"
    )
    speech_idle_release_s: float | None = Field(
        default=10.0,
        gt=0,
        description="the keyword's pretrained speech embedding (loaded at the first utterance, "
        "~7 MB resident) is dropped after this long without an utterance and loaded again by "
        "the next one (~20-30 ms before its embedding); None keeps it loaded",
    )
    publish_events: bool = Field(default=True, description="publish events on MQTT (QoS 1)")
    discovery: bool = Field(
        default=True,
        description="announce the inference entities to Home Assistant (with [homeassistant] "
        "enabled, under its discovery_prefix)",
    )
    alarm_off_delay_s: int = Field(
        default=60, ge=1, description="HA alarm binary_sensor turns off after"
    )
    debug_audio_dir: Path | None = Field(
        default=None,
        description="LOCAL DEBUG ONLY: append received raw PCM per microphone to files here; "
        "off by default (audio is otherwise processed in memory and discarded)",
    )
