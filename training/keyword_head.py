"""The keyword head: a small temporal convolution over the utterance's speech embeddings.

Training-time only (PyTorch, from the ``train`` extra); the result is one ONNX graph that the
gateway runs with onnxruntime like every other head. Its input is the row `keyword_features`
makes (KW_STEPS x 96 embeddings less their window mean, flattened, then the log duration), so
the serving code does not change with the head.

Why a convolution: the flat MLP it replaces had to learn every word at every position of the
2 s window, and it mixed up "lights on" / "lights off" and missed "stop" on held-out voices.
Two 3-step convolutions see the same 240 ms patterns wherever they fall, max pooling over time
finds the word, and the mean of the last four steps keeps where the utterance ends (the
endpointer puts its end there). Training also shifts windows by up to two steps. Several seeds'
heads are averaged in the graph: single heads disagree on held-out voices by a few points.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.inference.speech_embedding import EMBED_DIM, KW_STEPS

CHANNELS = 64
DROPOUT = 0.3
EPOCHS = 15
BATCH = 128
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-2
MAX_SHIFT = 2  # steps (80 ms each) a training batch may be shifted by
TAIL = 4  # last steps averaged: where the endpointed utterance ends


def _modules() -> Any:
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
            self.conv = nn.Sequential(
                nn.Conv1d(EMBED_DIM, CHANNELS, 3, padding=1),
                nn.ReLU(),
                nn.Dropout(DROPOUT),
                nn.Conv1d(CHANNELS, CHANNELS, 3, padding=1),
                nn.ReLU(),
            )
            self.out = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(2 * CHANNELS + 1, 4))

        def forward(self, emb: Any, log_duration: Any) -> Any:
            x = ((emb - self.mean) / self.std).transpose(1, 2)  # (batch, channels, steps)
            h = self.conv(x)
            pooled = torch.cat([h.amax(2), h[:, :, -TAIL:].mean(2), log_duration[:, None]], 1)
            return self.out(pooled)

    class Averaged(nn.Module):
        """The exported graph: flat `keyword_features` rows -> (label, probabilities)."""

        def __init__(self, heads: Sequence[Any]) -> None:
            super().__init__()
            self.heads = nn.ModuleList(heads)

        def forward(self, features: Any) -> tuple[Any, Any]:
            emb = features[:, : KW_STEPS * EMBED_DIM].reshape(-1, KW_STEPS, EMBED_DIM)
            log_duration = features[:, KW_STEPS * EMBED_DIM]
            probs = torch.stack([torch.softmax(h(emb, log_duration), 1) for h in self.heads]).mean(
                0
            )
            return probs.argmax(1), probs

    return torch, nn, Head, Averaged


def train_keyword_head(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    seeds: Sequence[int],
    keyword_weight: float,
) -> tuple[bytes, npt.NDArray[np.float32]]:
    """Train one head per seed on `keyword_features` rows `x` with labels `y` (0 = other, whose
    loss weighs 1 against `keyword_weight` for each keyword); return the averaged heads as ONNX
    bytes and their probabilities on `x` (for the training accuracy)."""
    torch, nn, head_cls, averaged_cls = _modules()
    torch.set_num_threads(2)
    emb = x[:, : KW_STEPS * EMBED_DIM].reshape(-1, KW_STEPS, EMBED_DIM)
    mean, std = emb.mean(axis=(0, 1)), emb.std(axis=(0, 1)) + 1e-6
    emb_t = torch.tensor(emb)
    dur_t = torch.tensor(x[:, KW_STEPS * EMBED_DIM], dtype=torch.float32)
    y_t = torch.tensor(y, dtype=torch.long)
    weight = torch.tensor([1.0] + [keyword_weight] * 3)
    heads = []
    for seed in seeds:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        head = head_cls(mean, std)
        opt = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        head.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(y_t), generator=gen)
            for i in range(0, len(order), BATCH):
                idx = order[i : i + BATCH]
                shift = int(torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (1,), generator=gen))
                batch = torch.roll(emb_t[idx], shift, 1) if shift else emb_t[idx]
                loss = nn.functional.cross_entropy(head(batch, dur_t[idx]), y_t[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
        heads.append(head.eval())
    model = averaged_cls(heads).eval()
    with torch.no_grad():
        probs = model(torch.tensor(x))[1].numpy().astype(np.float32)
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(1, x.shape[1]),),
        buf,
        input_names=["features"],
        output_names=["label", "probabilities"],
        dynamic_axes={
            "features": {0: "batch"},
            "label": {0: "batch"},
            "probabilities": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    return buf.getvalue(), probs
