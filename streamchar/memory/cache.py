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

    def all_valid(self, below: int) -> bool:
        """Whether the segments before ``below`` are all present with every token valid (then a chunk
        attending to them needs no mask, and attention can take its fastest kernel)."""
        present = all(s in self.segments for s in range(below))
        if not present or any(self.segments[s][2].is_meta for s in range(below)):  # meta: counting FLOPs
            return present
        return all(bool(self.segments[s][2].all()) for s in range(below))

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


class StaticContextCache(ContextCache):
    """The same cache with a fixed layout: one preallocated K/V buffer per layer for every context segment.

    Each segment has its own slice of ``[B, H, N_ctx, D]`` (``N_ctx`` = reference + sink + motion tokens);
    setting a segment writes into its slice in place, and a segment not set yet (or dropped) is only
    marked invalid. So the current chunk always attends over the same tensors at the same addresses, with
    the same shapes, from the first chunk to the last: what ``torch.compile`` needs to compile the step
    once, and CUDA graphs need to replay it without copying the context in. Masked-out slots give the
    same attention as absent ones, so outputs equal :class:`ContextCache`'s.

    A padding query (an invalid current-chunk token) reads every slot, set or not, where the growing cache
    has only the segments present; no valid token reads a padding token's output, so every valid output
    is the same.

    Args:
        sizes: tokens of each context segment, in window order (reference, sink, motion).
    """

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.sizes = tuple(int(n) for n in sizes)
        self.starts = [sum(self.sizes[:s]) for s in range(len(self.sizes) + 1)]
        self.keys: list[torch.Tensor] = []  # per layer [B, H, N_ctx, D]
        self.values: list[torch.Tensor] = []
        self.valid: torch.Tensor | None = None  # [B, N_ctx]
        self.ids: torch.Tensor | None = None  # [N_ctx] segment of each slot
        self._complete = [False] * len(self.sizes)  # per segment: set with every token valid

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, layers: int, batch: int) -> None:
        """New buffers shaped, typed and placed like ``keys`` / ``values``; segments already set are copied
        over (cast), so a change of batch, dtype or device never loses them."""
        kept = {s: (list(k), list(v), m) for s, (k, v, m) in self.segments.items()}
        b, h, _, d = keys.shape
        total = self.starts[-1]
        self.keys = [keys.new_zeros(b, h, total, d) for _ in range(layers)]
        self.values = [values.new_zeros(b, h, total, values.shape[-1]) for _ in range(layers)]
        self.valid = torch.zeros(batch, total, dtype=torch.bool, device=keys.device)
        self.ids = torch.cat([torch.full((n,), s, dtype=torch.long) for s, n in enumerate(self.sizes)]).to(
            keys.device
        )
        if keys.is_cuda:  # a CUDA graph of the step reads these in place instead of copying them in
            for buffer in self.buffers():
                torch._dynamo.mark_static_address(buffer, guard=False)
        self.segments, self._complete = {}, [False] * len(self.sizes)
        for segment, (k, v, m) in sorted(kept.items()):
            if m.shape[0] == batch:  # another batch size cannot carry the old segments over
                self._write(segment, k, v, m)

    def _fits(self, keys: torch.Tensor, values: torch.Tensor, batch: int) -> bool:
        if self.valid is None:
            return False
        k, v = self.keys[0], self.values[0]
        return (k.shape[0] == keys.shape[0] == batch and k.dtype == keys.dtype
                and v.dtype == values.dtype and k.device == keys.device)  # fmt: skip

    def set(self, segment, keys, values, valid) -> None:
        n = keys[0].shape[2]
        if n != self.sizes[segment]:
            raise ValueError(
                f"The {SEGMENTS[segment]} segment has {n} tokens but this static cache was laid out for "
                f"{self.sizes[segment]}; pad it to the timeline's size (padding marked invalid) or stream "
                "with a growing ContextCache."
            )
        if not self._fits(keys[0], values[0], valid.shape[0]):
            self._allocate(keys[0], values[0], len(keys), valid.shape[0])
        self._write(segment, keys, values, valid)

    def _write(self, segment, keys, values, valid) -> None:
        """Copy a segment into its slice of the buffers (cast to their dtype and device)."""
        lo, hi = self.starts[segment], self.starts[segment + 1]
        for buffer, new in zip(self.keys + self.values, keys + values, strict=True):
            buffer[:, :, lo:hi].copy_(new)
        self.valid[:, lo:hi].copy_(valid)
        self.segments[segment] = (
            [k[:, :, lo:hi] for k in self.keys],
            [v[:, :, lo:hi] for v in self.values],
            self.valid[:, lo:hi],
        )
        self._complete[segment] = bool(valid.all())

    def reset(self) -> None:
        """Forget every segment, keeping the buffers (a new session reuses them at the same addresses)."""
        for segment in list(self.segments):
            self.drop(segment)

    def drop(self, segment: int) -> None:
        if self.segments.pop(segment, None) is not None:
            self.valid[:, self.starts[segment] : self.starts[segment + 1]] = False
            self._complete[segment] = False

    def replace_with(self, other: ContextCache) -> None:
        for segment in list(self.segments):
            self.drop(segment)
        for segment, (keys, values, valid) in sorted(other.segments.items()):
            self.set(segment, keys, values, valid)

    def prefix(self, layer: int, below: int):
        if not self.segments or min(self.segments) >= below:
            return None
        end = self.starts[below]
        if end == self.starts[-1]:  # the whole context: the buffers themselves (fixed addresses)
            return self.keys[layer], self.values[layer], self.valid, self.ids
        return (self.keys[layer][:, :, :end], self.values[layer][:, :, :end], self.valid[:, :end],
                self.ids[:end])  # fmt: skip

    def all_valid(self, below: int) -> bool:
        return all(self._complete[:below])

    def nbytes(self) -> int:
        if self.valid is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self.keys + self.values) + self.valid.numel()

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor a compiled step reads from the cache (their addresses never change)."""
        return [*self.keys, *self.values, self.valid, self.ids] if self.valid is not None else []


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
