"""Export fitted scikit-learn models to ONNX and write their manifest and model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gateway.inference.manifest import AppliesTo, ModelKind, ModelManifest

INPUT = "features"


def export_classifier(model: Any, n_features: int) -> bytes:
    """A classifier as ONNX: outputs (label, probabilities as a plain tensor)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        model,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString()


def export_transformer(model: Any, n_features: int) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        model,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString()


def write_model(
    directory: Path,
    name: str,
    onnx_bytes: bytes,
    *,
    kind: str,
    inputs: str,
    extra: dict[str, Any],
    card: dict[str, Any],
    applies_to: AppliesTo | None = None,
) -> ModelManifest:
    """Write ``name.onnx``, its manifest ``name.json`` and its card ``name.md``."""
    digest = hashlib.sha256(onnx_bytes).hexdigest()[:10]
    (directory / f"{name}.onnx").write_bytes(onnx_bytes)
    thresholds = {
        k: float(v)
        for k, v in extra.items()
        if k.startswith("threshold") or k in ("cooldown_s", "z_threshold")
    }
    manifest = ModelManifest(
        name=name,
        version=f"1.0+{digest}",
        file=f"{name}.onnx",
        kind=ModelKind(kind),
        applies_to=applies_to or AppliesTo(audio=True),
        window_s=float(extra.get("window_s", 0.01)),
        hop_s=float(extra.get("hop_s", 0.01)),
        preprocessing=inputs,
        n_features=int(extra.get("n_features", 0) or _n_inputs(onnx_bytes)),
        thresholds=thresholds,
        labels=list(extra.get("labels", [])),
    )
    (directory / f"{name}.json").write_text(
        manifest.model_dump_json(indent=1) + "\n", encoding="utf-8"
    )
    lines = [
        f"# Model card: {name} ({manifest.version})",
        "",
        f"- kind: {kind}",
        f"- input: {inputs}",
    ]
    for key, value in card.items():
        text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
        lines.append(f"- {key}: {text}")
    lines += [
        "",
        "Made by the seeded training scripts in training/; regenerate, do not edit.",
        "",
    ]
    (directory / f"{name}.md").write_text("\n".join(lines), encoding="utf-8")
    return manifest


def _n_inputs(onnx_bytes: bytes) -> int:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return int(model.graph.input[0].type.tensor_type.shape.dim[1].dim_value)
