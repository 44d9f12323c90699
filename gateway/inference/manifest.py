"""Model manifests: the JSON file next to each ``.onnx`` that says what the model is for.

A manifest names the model and its version, its file, what it applies to (audio, or device
classes and metrics), its window and hop, the pre-processing its input expects and its
thresholds. The engine decides what to run from manifests alone.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ModelKind(StrEnum):
    """What a model does; the engine has one code path per kind."""

    AUDIO_EMBEDDING = "audio_embedding"
    AUDIO_VAD = "audio_vad"
    AUDIO_KEYWORD = "audio_keyword"
    AUDIO_ALARM = "audio_alarm"
    SENSOR_ANOMALY = "sensor_anomaly"
    SENSOR_OCCUPANCY = "sensor_occupancy"


class AppliesTo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    audio: bool = Field(default=False, description="runs on microphone audio")
    device_classes: list[str] = Field(default_factory=list, description="device classes it reads")
    metrics: list[str] = Field(default_factory=list, description="metrics it reads, in input order")


class ModelManifest(BaseModel):
    """One model's declaration (``<name>.json`` beside ``<name>.onnx``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="model name; also the MQTT event topic level")
    version: str = Field(description="version string stored with every result")
    file: str = Field(description="ONNX file name, relative to the manifest")
    kind: ModelKind
    applies_to: AppliesTo
    window_s: float = Field(gt=0, description="window length in seconds")
    hop_s: float = Field(gt=0, description="hop between windows in seconds")
    preprocessing: str = Field(description="what the input vector is")
    n_features: int = Field(gt=0, description="input width")
    thresholds: dict[str, float] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list, description="class labels, output order")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file."""


def read_manifest(path: Path) -> ModelManifest:
    try:
        return ModelManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        raise ManifestError(f"model manifest {path}: {exc}") from exc


def discover(directory: Path) -> list[Path]:
    """Manifest files in `directory` (every ``*.json`` that is not a metrics file)."""
    return sorted(p for p in directory.glob("*.json") if not p.name.endswith("_metrics.json"))
