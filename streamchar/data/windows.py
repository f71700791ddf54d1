"""Training windows drawn from the latent cache (:class:`~streamchar.data.latents.LatentCache`).

:class:`WindowDataset` samples training windows laid out as DESIGN.md section 8: a reference image
and a reference voice (from another clip of the same character when there is one), the sink
chunk (the clip's first chunk), motion frames (the latent frames just before the current chunk)
and the current chunk, for video and audio, with the current chunk's frame-aligned conditions.
:class:`UnitWindowDataset` samples the acoustic prior's windows and :class:`RolloutDataset` whole
sessions of consecutive chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamchar.data.latents import LatentCache
from streamchar.data.shards import CorpusError
from streamchar.timeline import Timeline


class WindowDataset(torch.utils.data.Dataset):
    """Training windows from a latent cache.

    Item ``i`` is drawn from its own random stream ``(seed, i)``. Shapes (``C`` latent channels,
    ``L`` = ``chunk_latent_frames``, ``M`` motion, ``S`` sink latent frames; audio sizes are the
    matching token counts, ``D_a`` the audio latent width, ``R`` reference-voice tokens):

    - ``video`` ``[C, L, h, w]``, ``audio`` ``[L_a, D_a]``, ``audio_mask`` ``[L_a]`` (False past the
      chunk's end when a causal codec's first chunk is shorter);
    - ``units``, ``phoneme_ids``, ``speaking`` ``[L_a]`` (long), ``f0`` ``[L_a]``;
    - ``motion_video`` ``[C, M, h, w]``, ``motion_audio`` ``[M_a, D_a]``, ``has_motion`` (bool);
    - ``sink_video`` ``[C, S, h, w]``, ``sink_audio`` ``[S_a, D_a]``, ``has_sink`` (bool);
    - ``ref_image`` ``[C, 1, h, w]``; ``ref_voice`` ``[R, D_a]`` with ``ref_voice_mask`` ``[R]``;
    - ``mouth_open`` ``[L_v]`` for synthetic clips (NaN otherwise), ``L_v`` video frames of the chunk;
    - ``mouth_box`` ``[L, 4]`` per latent frame, the ``(x0, y0, x1, y1)`` box (fractions of the frame) that
      holds the mouth in every video frame of that latent frame, and ``has_mouth_box`` (False for clips
      whose ground truth has none, such as real clips: the box is then the whole frame);
    - with ``unit_context`` > 0, ``context_units`` and ``context_speaking`` ``[unit_context]`` (long): the
      units and speaking flags just before the chunk, ``-1`` / 0 before the clip's start (what the acoustic
      prior reads).

    With probability ``first_chunk_prob`` the window is a session's first chunk: no sink, no motion.
    """

    def __init__(
        self,
        cache: LatentCache | str | Path,
        split: str = "train",
        length: int = 10_000,
        seed: int = 0,
        first_chunk_prob: float = 0.1,
        timeline: Timeline | None = None,
        min_chunks: int = 1,
        unit_context: int = 0,
    ) -> None:
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache(cache)
        self.timeline = tl = self.cache.window_timeline(timeline)
        self.split, self.length, self.seed, self.first_chunk_prob = split, length, seed, first_chunk_prob
        self.unit_context = unit_context
        need = min_chunks * tl.chunk_latent_frames  # only clips at least this long
        self.entries = [e for e in self.cache.entries(split) if e["latent_frames"] >= need]
        if not self.entries:
            raise CorpusError(
                f"No '{split}' clip in {self.cache.folder} is at least {need} latent frames long."
            )
        self.by_character: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            self.by_character.setdefault(str(e["char_id"]), []).append(i)
        # clips weighted by how many chunk starts they offer
        weights = np.array(
            [max(1, e["latent_frames"] - tl.chunk_latent_frames + 1) for e in self.entries], float
        )
        self.weights = weights / weights.sum()
        first = self.cache.tensor(self.entries[0], "video")
        self.latent_shape = tuple(first.shape[0:1]) + tuple(first.shape[2:])  # (C, h, w)
        self.audio_dim = self.cache.tensor(self.entries[0], "audio").shape[1]

    def __len__(self) -> int:
        return self.length

    def _audio_span(self, start: int, stop: int) -> tuple[int, int]:
        tl = self.timeline
        return tl.latent_frames_to_audio_tokens(start), tl.latent_frames_to_audio_tokens(stop)

    def _audio(self, entry: dict, start: int, stop: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        a0, a1 = self._audio_span(start, stop)
        audio = self.cache.slice(entry, "audio", a0, a1).float()
        out = torch.zeros(size, self.audio_dim)
        mask = torch.zeros(size, dtype=torch.bool)
        n = min(size, len(audio))
        out[:n], mask[:n] = audio[:n], True
        return out, mask

    def _conditions(self, entry: dict, start: int, stop: int, size: int) -> dict[str, torch.Tensor]:
        a0, a1 = self._audio_span(start, stop)
        out = {}
        for name, dtype in (
            ("units", torch.long),
            ("phoneme_ids", torch.long),
            ("speaking", torch.long),
            ("f0", torch.float),
        ):
            values = self.cache.slice(entry, name, a0, a1).to(dtype)
            padded = torch.zeros(size, dtype=dtype)
            padded[: min(size, len(values))] = values[:size]
            out[name] = padded
        return out

    def context_conditions(self, entry: dict, first_token: int, size: int) -> dict[str, torch.Tensor]:
        """``context_units`` / ``context_speaking`` ``[size]``: the ``size`` tokens before ``first_token``,
        ``-1`` / 0 where they fall before the clip's start."""
        units = torch.full((size,), -1, dtype=torch.long)
        speaking = torch.zeros(size, dtype=torch.long)
        start = max(0, first_token - size)
        if first_token > start:
            units[size - (first_token - start) :] = self.cache.slice(
                entry, "units", start, first_token
            ).long()
            speaking[size - (first_token - start) :] = self.cache.slice(
                entry, "speaking", start, first_token
            ).long()
        return {"context_units": units, "context_speaking": speaking}

    def mouth_boxes(self, entry: dict, start: int, frames: int) -> tuple[torch.Tensor, bool]:
        """``[frames, 4]`` mouth boxes of latent frames ``start ..``, each the union over its video frames
        (the whole frame where the clip has no box), and whether the clip has boxes."""
        tl = self.timeline
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(frames, 1)
        if not self.cache.has(entry, "gt/mouth_box"):
            return boxes, False
        v0, _ = tl.latent_frame_span(start)
        _, v1 = tl.latent_frame_span(start + frames - 1)
        per_video = self.cache.slice(entry, "gt/mouth_box", v0, v1).float()  # [V, 4]
        for k in range(frames):
            a, b = tl.latent_frame_span(start + k)
            span = per_video[a - v0 : b - v0]
            if len(span):
                boxes[k] = torch.cat([span[:, :2].min(0).values, span[:, 2:].max(0).values])
        return boxes, True

    def __getitem__(self, index: int) -> dict:
        tl = self.timeline
        rng = np.random.default_rng([self.seed, index])
        ci = int(rng.choice(len(self.entries), p=self.weights))
        entry = self.entries[ci]
        n = entry["latent_frames"]
        L, M, S = tl.chunk_latent_frames, tl.motion_latent_frames, tl.sink_latent_frames
        can_stream = n >= S + L and S >= M
        first = (not can_stream) or rng.random() < self.first_chunk_prob
        start = 0 if first else int(rng.integers(S, n - L + 1))
        c, h, w = self.latent_shape
        item: dict = {"key": entry["key"], "start": start}

        item["video"] = self.cache.slice(entry, "video", start, start + L, dim=1).float()
        chunk_tokens = tl.chunk_audio_tokens
        item["audio"], item["audio_mask"] = self._audio(entry, start, start + L, chunk_tokens)
        item.update(self._conditions(entry, start, start + L, chunk_tokens))

        item["has_motion"] = item["has_sink"] = not first
        if first:
            item["motion_video"] = torch.zeros(c, M, h, w)
            item["motion_audio"] = torch.zeros(tl.motion_audio_tokens, self.audio_dim)
            item["sink_video"] = torch.zeros(c, S, h, w)
            item["sink_audio"] = torch.zeros(tl.sink_audio_tokens, self.audio_dim)
        else:
            item["motion_video"] = self.cache.slice(entry, "video", start - M, start, dim=1).float()
            item["motion_audio"], _ = self._audio(entry, start - M, start, tl.motion_audio_tokens)
            item["sink_video"] = self.cache.slice(entry, "video", 0, S, dim=1).float()
            item["sink_audio"], _ = self._audio(entry, 0, S, tl.sink_audio_tokens)

        # references: another clip of the same character when there is one
        peers = [i for i in self.by_character[str(entry["char_id"])] if i != ci]
        ref_entry = self.entries[int(rng.choice(peers))] if peers else entry
        rn = ref_entry["latent_frames"]
        ref_frame = int(rng.integers(rn))
        item["ref_image"] = self.cache.slice(ref_entry, "video", ref_frame, ref_frame + 1, dim=1).float()
        R = tl.reference_voice_tokens
        ra = ref_entry["audio_tokens"]
        r0 = int(rng.integers(max(1, ra - R + 1)))
        voice = self.cache.slice(ref_entry, "audio", r0, min(ra, r0 + R)).float()
        item["ref_voice"] = torch.zeros(R, self.audio_dim)
        item["ref_voice_mask"] = torch.zeros(R, dtype=torch.bool)
        item["ref_voice"][: len(voice)], item["ref_voice_mask"][: len(voice)] = voice, True

        v0, _ = tl.latent_frame_span(start)
        _, v1 = tl.latent_frame_span(start + L - 1)
        if self.cache.has(entry, "gt/mouth_open"):
            mouth = self.cache.slice(entry, "gt/mouth_open", v0, v1).float()
        else:
            mouth = torch.full((v1 - v0,), float("nan"))
        item["mouth_open"] = torch.full((tl.chunk_video_frames(1),), float("nan"))
        item["mouth_open"][: len(mouth)] = mouth[: tl.chunk_video_frames(1)]
        item["mouth_box"], item["has_mouth_box"] = self.mouth_boxes(entry, start, L)
        if self.unit_context:
            item.update(
                self.context_conditions(entry, tl.latent_frames_to_audio_tokens(start), self.unit_context)
            )
        return item


class UnitWindowDataset(torch.utils.data.Dataset):
    """Windows for the acoustic prior: ``context + chunk_audio_tokens`` tokens of units and speaking flags
    whose chunk starts anywhere in a clip (audio-only clips included), the window's audio latents as the
    target, and a reference voice.

    Item ``i`` (its own random stream ``(seed, i)``): ``units``, ``speaking`` ``[context + L_a]`` (long; ``-1``
    / 0 before the clip's start), ``audio`` ``[context + L_a, D_a]`` with ``audio_mask`` (False before the
    clip's start and after its end), ``ref_voice`` ``[R, D_a]`` with ``ref_voice_mask`` ``[R]`` (from another
    clip of the same character when there is one).
    """

    def __init__(self, cache: LatentCache | str | Path, split: str = "train", context: int = 16,
                 length: int = 10_000, seed: int = 0, timeline: Timeline | None = None) -> None:  # fmt: skip
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache(cache)
        self.timeline = self.cache.window_timeline(timeline)
        self.context, self.length, self.seed = context, length, seed
        self.entries = [e for e in self.cache.entries(split, audio_only=True) if e["audio_tokens"] > 0]
        if not self.entries:
            raise CorpusError(f"No '{split}' clip in {self.cache.folder} holds audio.")
        self.by_character: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            self.by_character.setdefault(str(e["char_id"]), []).append(i)
        weights = np.array([e["audio_tokens"] for e in self.entries], float)
        self.weights = weights / weights.sum()

    def __len__(self) -> int:
        return self.length

    def _tokens(self, entry: dict, name: str, start: int, stop: int, fill: int) -> torch.Tensor:
        """``[stop - start]`` of a per-token tensor, ``fill`` outside the clip."""
        out = torch.full((stop - start,), fill, dtype=torch.long)
        a, b = max(0, start), min(entry["audio_tokens"], stop)
        if b > a:
            out[a - start : b - start] = self.cache.slice(entry, name, a, b).long()
        return out

    def __getitem__(self, index: int) -> dict:
        tl = self.timeline
        rng = np.random.default_rng([self.seed, index])
        ci = int(rng.choice(len(self.entries), p=self.weights))
        entry = self.entries[ci]
        L_a = tl.chunk_audio_tokens
        start = int(rng.integers(0, max(1, entry["audio_tokens"] - L_a + 1)))  # the chunk's first token
        first = start - self.context  # the window's
        units = self._tokens(entry, "units", first, start + L_a, -1)
        speaking = self._tokens(entry, "speaking", first, start + L_a, 0)
        a, b = max(0, first), min(entry["audio_tokens"], start + L_a)
        audio = self.cache.slice(entry, "audio", a, b).float()
        target = torch.zeros(self.context + L_a, audio.shape[1])
        mask = torch.zeros(self.context + L_a, dtype=torch.bool)
        target[a - first : b - first], mask[a - first : b - first] = audio, True
        peers = [i for i in self.by_character[str(entry["char_id"])] if i != ci]
        ref_entry = self.entries[int(rng.choice(peers))] if peers else entry
        R, ra = tl.reference_voice_tokens, ref_entry["audio_tokens"]
        r0 = int(rng.integers(max(1, ra - R + 1)))
        voice = self.cache.slice(ref_entry, "audio", r0, min(ra, r0 + R)).float()
        ref_voice, ref_mask = torch.zeros(R, audio.shape[1]), torch.zeros(R, dtype=torch.bool)
        ref_voice[: len(voice)], ref_mask[: len(voice)] = voice, True
        return {"key": entry["key"], "start": start, "units": units, "speaking": speaking, "audio": target,
                "audio_mask": mask, "ref_voice": ref_voice, "ref_voice_mask": ref_mask}  # fmt: skip


class RolloutDataset(WindowDataset):
    """Sessions of ``chunks`` consecutive chunks from the start of a clip, for rollout training.

    Item ``i`` is a first-chunk window (references, chunk 0's conditions; no sink, no motion) plus the
    conditions of every chunk: ``chunk_units``, ``chunk_speaking`` ``[R, L_a]`` (long) and
    ``chunk_audio_mask`` ``[R, L_a]``, and every chunk's ground truth: ``chunk_video`` ``[R, C, L, h, w]``,
    ``chunk_audio`` ``[R, L_a, D_a]`` and ``chunk_mouth_box`` ``[R, L, 4]``. Only clips at least ``chunks``
    chunks long are used.
    """

    def __init__(self, cache, split: str = "train", chunks: int = 4, length: int = 10_000, seed: int = 0,
                 timeline: Timeline | None = None) -> None:  # fmt: skip
        super().__init__(cache, split, length, seed, first_chunk_prob=1.0, timeline=timeline)
        need = chunks * self.timeline.chunk_latent_frames
        self.entries = [e for e in self.entries if e["latent_frames"] >= need]
        if not self.entries:
            raise CorpusError(
                f"No '{split}' clip in {self.cache.folder} is {chunks} chunks ({need} latent frames) long."
            )
        self.chunks = chunks
        self.by_character = {}
        for i, e in enumerate(self.entries):
            self.by_character.setdefault(str(e["char_id"]), []).append(i)
        weights = np.ones(len(self.entries))
        self.weights = weights / weights.sum()

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        entry = next(e for e in self.entries if e["key"] == item["key"])
        L, L_a = self.timeline.chunk_latent_frames, self.timeline.chunk_audio_tokens
        units, speaking, audio, masks, video, boxes = [], [], [], [], [], []
        for r in range(self.chunks):
            cond = self._conditions(entry, r * L, (r + 1) * L, L_a)
            units.append(cond["units"])
            speaking.append(cond["speaking"])
            chunk_audio, mask = self._audio(entry, r * L, (r + 1) * L, L_a)
            audio.append(chunk_audio)
            masks.append(mask)
            video.append(self.cache.slice(entry, "video", r * L, (r + 1) * L, dim=1).float())
            boxes.append(self.mouth_boxes(entry, r * L, L)[0])
        item["chunk_units"], item["chunk_speaking"] = torch.stack(units), torch.stack(speaking)
        item["chunk_audio"], item["chunk_audio_mask"] = torch.stack(audio), torch.stack(masks)
        item["chunk_video"], item["chunk_mouth_box"] = torch.stack(video), torch.stack(boxes)
        return item
