"""Per-layer K/V of the window's context segments, and the streaming-state pattern.

``ContextCache`` keeps, for each context segment present (reference, sink, motion), the keys and values
every transformer layer computed for it, plus which of its tokens are valid. The reference and sink
entries are computed once per session and the motion entry once per chunk; every denoising step of the
current chunk attends to them without recomputing anything. Its size depends only on the window
layout, never on how long a session has run.

``StreamingModule`` follows audiocraft's pattern: ``with module.streaming(): ...`` creates the state,
which is dropped on exit; ``get_streaming_state`` / ``set_streaming_state`` save and restore a live
session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from streamchar.memory.window import SEGMENTS


class ContextCache:
    """K/V per layer for the context segments ``reference``, ``sink`` and ``motion``."""

    def __init__(self) -> None:
        # segment index -> (keys per layer [B, H, n, D], values per layer, valid [B, n])
        self.segments: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}
        # concatenated prefixes, reused by every denoising step until a segment changes
        self._prefixes: dict[tuple[int, int], tuple[torch.Tensor, ...] | None] = {}

    def set(
        self, segment: int, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor
    ) -> None:
        self.segments[segment] = (keys, values, valid)
        self._prefixes.clear()

    def replace_with(self, other: ContextCache) -> None:
        """Take ``other``'s segments in place (the object a ``streaming()`` block yielded stays valid)."""
        self.segments = dict(other.segments)
        self._prefixes.clear()

    def drop(self, segment: int) -> None:
        if self.segments.pop(segment, None) is not None:
            self._prefixes.clear()

    def prefix(
        self, layer: int, below: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Keys, values ``[B, H, n, D]``, valid ``[B, n]`` and segment ids ``[n]`` of the segments before
        ``below``, in window order; None when there are none."""
        if (layer, below) not in self._prefixes:
            self._prefixes[(layer, below)] = self._concatenate(layer, below)
        return self._prefixes[(layer, below)]

    def _concatenate(self, layer: int, below: int):
        present = [s for s in sorted(self.segments) if s < below]
        if not present:
            return None
        keys = torch.cat([self.segments[s][0][layer] for s in present], dim=2)
        values = torch.cat([self.segments[s][1][layer] for s in present], dim=2)
        valid = torch.cat([self.segments[s][2] for s in present], dim=1)
        ids = torch.cat([torch.full((self.segments[s][2].shape[1],), s, dtype=torch.long) for s in present])
        return keys, values, valid, ids.to(keys.device)

    def nbytes(self) -> int:
        """Bytes of the cached K/V (the concatenated prefixes add at most as much again)."""
        total = 0
        for keys, values, valid in self.segments.values():
            total += sum(t.numel() * t.element_size() for t in keys + values) + valid.numel()
        return total

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for segment, (keys, values, valid) in self.segments.items():
            name = SEGMENTS[segment]
            out[f"{name}.valid"] = valid
            for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
                out[f"{name}.{layer}.k"], out[f"{name}.{layer}.v"] = k, v
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ContextCache:
        cache = cls()
        for segment, name in enumerate(SEGMENTS):
            if f"{name}.valid" not in state:
                continue
            layers = sum(1 for key in state if key.startswith(f"{name}.") and key.endswith(".k"))
            keys = [state[f"{name}.{i}.k"] for i in range(layers)]
            values = [state[f"{name}.{i}.v"] for i in range(layers)]
            cache.set(segment, keys, values, state[f"{name}.valid"])
        return cache


class StreamingModule(nn.Module):
    """A module that holds per-session state while inside ``with module.streaming():``."""

    def __init__(self) -> None:
        super().__init__()
        self._stream: ContextCache | None = None

    @contextmanager
    def streaming(self, cache: ContextCache | None = None) -> Iterator[ContextCache]:
        """Hold a session's state for the block: a new one, or ``cache`` (kept by its owner between blocks,
        so one module can serve several sessions in turn)."""
        if self._stream is not None:
            raise RuntimeError("This module is already streaming; leave the current session first.")
        self._stream = cache if cache is not None else ContextCache()
        try:
            yield self._stream
        finally:
            self._stream = None

    @property
    def is_streaming(self) -> bool:
        return self._stream is not None

    def _require_stream(self) -> ContextCache:
        if self._stream is None:
            raise RuntimeError("Not streaming; wrap the session in `with model.streaming():`.")
        return self._stream

    def get_streaming_state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._require_stream().state_dict().items()}

    def set_streaming_state(self, state: dict[str, torch.Tensor]) -> None:
        self._require_stream().replace_with(ContextCache.from_state_dict(state))
