"""The model runtime: ONNX sessions loaded from manifests, warmed up, run off the event loop.

`ModelRuntime.load` reads every manifest in the models directory; a model that fails to load is
reported (`ModelRuntime.errors`, with the file named) and the others keep serving. Sessions run
with a configurable number of intra-op threads; the engine calls them from its single inference
thread, never from the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gateway.inference.manifest import (
    ManifestError,
    ModelKind,
    ModelManifest,
    discover,
    read_manifest,
)

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


class ModelLoadError(RuntimeError):
    """A model that could not be loaded; the message names the file and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"model {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """A ready session with its manifest."""

    manifest: ModelManifest
    path: Path
    session: ort.InferenceSession
    input_name: str

    def run(self, features: F32) -> list[npt.NDArray[np.generic]]:
        """All outputs for a (batch, n_features) float32 input."""
        return list(
            self.session.run(None, {self.input_name: np.ascontiguousarray(features, np.float32)})
        )

    def probabilities(self, features: F32) -> F32:
        """Class probabilities of a classifier (its last output), shape (batch, classes)."""
        return np.asarray(self.run(features)[-1], np.float32)


def load_model(
    manifest_path: Path,
    *,
    intra_op_threads: int = 1,
    thresholds: Mapping[str, float] | None = None,
) -> LoadedModel:
    """Load and warm up one model; raise `ModelLoadError` naming the failing file.
    `thresholds` override the manifest's (``[inference.thresholds.<name>]``): only names it
    has, so a typo is an error rather than a threshold nobody reads."""
    try:
        manifest = read_manifest(manifest_path)
    except ManifestError as exc:
        raise ModelLoadError(manifest_path, str(exc.__cause__ or exc)) from exc
    if thresholds:
        unknown = sorted(set(thresholds) - set(manifest.thresholds))
        if unknown:
            raise ModelLoadError(
                manifest_path,
                f"inference.thresholds.{manifest.name}.{unknown[0]}: the manifest has no such "
                f"threshold (it has {sorted(manifest.thresholds)})",
            )
        manifest = manifest.model_copy(update={"thresholds": {**manifest.thresholds, **thresholds}})
    path = manifest_path.parent / manifest.file
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No memory arena and no memory pattern: these are small MLPs and tree ensembles whose
    # intermediate tensors are a few KB, so the arena's retained chunks (grown by powers of two)
    # and the planned pattern buffers only add resident memory (0.36 MB over the six models,
    # each run at batch 1 and 8, measured 2026-11-29);
    # per-window latency is unchanged within noise (bench/inference.py model_latency).
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for any bad file
        raise ModelLoadError(path, f"onnxruntime could not load it: {exc}") from exc
    inputs = session.get_inputs()
    width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
    if len(inputs) != 1 or width != manifest.n_features:
        raise ModelLoadError(
            path,
            f"expects input {[i.shape for i in inputs]}, manifest says (N, {manifest.n_features})",
        )
    model = LoadedModel(manifest, path, session, inputs[0].name)
    try:
        model.run(np.zeros((1, manifest.n_features), np.float32))  # warm-up: first run allocates
    except Exception as exc:  # same: a graph that loads may still fail to run
        raise ModelLoadError(path, f"warm-up inference failed: {exc}") from exc
    return model


class ModelRuntime:
    """The loaded models, by name, and the errors of those that failed."""

    def __init__(
        self, models: Iterable[LoadedModel], errors: Iterable[ModelLoadError] = ()
    ) -> None:
        self.models = {m.manifest.name: m for m in models}
        self.errors = list(errors)

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        names: Iterable[str] | None = None,
        intra_op_threads: int = 1,
        thresholds: Mapping[str, Mapping[str, float]] | None = None,
    ) -> ModelRuntime:
        thresholds = thresholds or {}
        wanted = set(names) if names is not None else None
        loaded: list[LoadedModel] = []
        errors: list[ModelLoadError] = []
        for manifest_path in discover(directory):
            if wanted is not None and manifest_path.stem not in wanted:
                continue
            try:
                model = load_model(
                    manifest_path,
                    intra_op_threads=intra_op_threads,
                    thresholds=thresholds.get(manifest_path.stem),
                )
            except ModelLoadError as exc:
                log.error("%s; the other models keep serving", exc)
                errors.append(exc)
                continue
            loaded.append(model)
            log.info(
                "loaded model %s %s from %s",
                model.manifest.name,
                model.manifest.version,
                model.path,
            )
        return cls(loaded, errors)

    def of_kind(self, kind: ModelKind) -> LoadedModel | None:
        for model in self.models.values():
            if model.manifest.kind == kind:
                return model
        return None
