"""The latent cache (``streamchar data encode``) and the training windows drawn from it.

The cache mirrors the corpus shard by shard: ``latents-NNNNN.safetensors`` holds, per clip
``KEY``:

- ``KEY/video``: normalised video latents ``[C, T', h, w]`` (float16 by default);
- ``KEY/audio``: normalised audio latents ``[T_a, D_a]``;
- ``KEY/phoneme_ids``, ``KEY/f0``, ``KEY/units``, ``KEY/speaking``: per audio token ``[T_a]``;
- ``KEY/gt/NAME``: the corpus's per-video-frame ground truth (synthetic clips), ``[T, ...]``;

(clips of shards past ``data.encode.max_shards`` but within ``audio_max_shards`` have no ``video``: their index
entry says ``"video": false``, and :meth:`LatentCache.entries` leaves them out unless asked for audio clips)

with the clips' metadata (transcript, words, phonemes, character...) in the file's metadata.
``latents.json`` records the timeline, both codecs and the clip index. A shard is written under a
temporary name and renamed, and its sidecar index comes after, so re-running resumes.

:class:`WindowDataset` samples training windows laid out as DESIGN.md section 8: a reference image
and a reference voice (from another clip of the same character when there is one), the sink
chunk (the clip's first chunk), motion frames (the latent frames just before the current chunk)
and the current chunk, for video and audio, with the current chunk's frame-aligned conditions.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from streamchar.config import StreamCharConfig, to_dict
from streamchar.data.phonemes import F0Buckets, frame_phoneme_ids, frame_units, voiced_mask
from streamchar.data.shards import Corpus, CorpusError, write_json_atomic
from streamchar.timeline import Timeline
from streamchar.training import resolve_mixed_precision

logger = logging.getLogger(__name__)

MANIFEST = "latents.json"
F0_MIN, F0_MAX = 60.0, 500.0
_VOICED_RMS = 0.01  # -40 dBFS: quieter tokens count as unvoiced


def estimate_f0(audio: np.ndarray, timeline: Timeline, tokens: int) -> np.ndarray:
    """F0 in Hz per audio token (YIN on a window centred on the token), ``[tokens]``."""
    import librosa

    hop = timeline.samples_per_audio_token
    y = np.asarray(audio, dtype=np.float32)[hop // 2 :]
    needed = tokens * hop + 2048
    if len(y) < needed:
        y = np.pad(y, (0, needed - len(y)))
    f0 = librosa.yin(y, fmin=F0_MIN, fmax=F0_MAX, sr=timeline.sample_rate, frame_length=2048, hop_length=hop)
    return f0[:tokens].astype(np.float32)


def token_conditions(
    meta: dict, audio: np.ndarray, timeline: Timeline, tokens: int, buckets: F0Buckets
) -> dict:
    """Per-audio-token phoneme ids, F0 (0 when unvoiced), units and the speaking mask."""
    phonemes = [tuple(p) for p in meta.get("phonemes", [])]
    phoneme_ids = frame_phoneme_ids(phonemes, tokens, timeline.audio_latent_rate)
    hop = timeline.samples_per_audio_token
    frames = np.zeros(tokens * hop, np.float32)
    frames[: min(len(audio), len(frames))] = audio[: len(frames)]
    rms = np.sqrt((frames.reshape(tokens, hop) ** 2).mean(axis=1))
    f0 = estimate_f0(audio, timeline, tokens)
    voiced = voiced_mask(phoneme_ids) & (rms > _VOICED_RMS) if phonemes else rms > _VOICED_RMS
    f0 = np.where(voiced, f0, 0.0).astype(np.float32)
    units = frame_units(phoneme_ids, buckets.bucket(f0), buckets)
    centres = (np.arange(tokens) + 0.5) / timeline.audio_latent_rate
    speaking = np.zeros(tokens, dtype=np.uint8)
    for start, end in meta.get("speaking_spans", []):
        speaking[(centres >= start) & (centres < end)] = 1
    return {
        "phoneme_ids": phoneme_ids.astype(np.int16),
        "f0": f0,
        "units": units.astype(np.int32),
        "speaking": speaking,
    }


def _codec_meta(video_codec, audio_codec) -> dict:
    audio = {
        "kind": audio_codec.kind,
        "latent_dim": audio_codec.latent_dim,
        "samples_per_token": audio_codec.samples_per_token,
    }
    return {"video": video_codec.metadata(), "audio": audio}


def check_codecs_fit(timeline: Timeline, video_codec, audio_codec) -> None:
    """The codecs must produce the rates the timeline promises."""
    if (
        video_codec.temporal_factor != timeline.temporal_factor
        or video_codec.causal_first_frame != timeline.causal_first_frame
    ):
        raise CorpusError(
            f"The video codec groups {video_codec.temporal_factor} frames per latent (causal first frame: "
            f"{video_codec.causal_first_frame}) but the timeline says {timeline.temporal_factor} "
            f"({timeline.causal_first_frame}); set timeline.temporal_factor and timeline.causal_first_frame to match."
        )
    if audio_codec.samples_per_token != timeline.samples_per_audio_token:
        raise CorpusError(
            f"The audio codec makes a token every {audio_codec.samples_per_token} samples but the timeline says "
            f"{timeline.samples_per_audio_token}; make audio_codec and timeline.audio_latent_rate agree."
        )


def encode_clip(
    clip,
    timeline: Timeline,
    video_codec,
    audio_codec,
    buckets: F0Buckets,
    dtype: torch.dtype,
    bf16: bool = False,
    with_video: bool = True,
) -> dict:
    """Tensors of one clip for the cache (see the module docstring); ``bf16`` autocasts the video
    encoder only (the mel transform stays in float32). ``with_video=False``: audio, conditions and ground
    truth only (``clip.frames`` may then be None)."""
    count = len(clip.frames) if clip.frames is not None else int(clip.meta["num_frames"])
    frames = timeline.valid_video_frames(count)
    if frames < 1:
        raise CorpusError(f"Clip {clip.key} has no frames.")
    tensors = {}
    if with_video:
        with torch.autocast(video_codec.device.type, torch.bfloat16, enabled=bf16):
            video = video_codec.encode(clip.frames[:frames]).float()
        tensors["video"] = video.to("cpu", dtype)  # [C, T', h, w]
    tokens = timeline.video_frames_to_audio_tokens(frames)
    samples = timeline.audio_tokens_to_samples(tokens)
    audio_wave = np.zeros(samples, np.float32)
    audio_wave[: min(samples, len(clip.audio))] = clip.audio[:samples]
    tensors["audio"] = audio_codec.encode(audio_wave).to("cpu", dtype)[:tokens]  # [T_a, D_a]
    for name, value in token_conditions(clip.meta, audio_wave, timeline, tokens, buckets).items():
        tensors[name] = torch.from_numpy(value)
    for name, value in clip.ground_truth.items():
        tensors[f"gt/{name}"] = torch.from_numpy(np.ascontiguousarray(value[:frames]))
    return tensors


def _slim_meta(meta: dict) -> dict:
    keep = ("key", "split", "kind", "char_id", "style", "transcript", "words", "phonemes", "speaking_spans",
            "voice", "dialogue_id", "partner_char_id", "duration", "num_frames")  # fmt: skip
    return {k: meta[k] for k in keep if k in meta}


def encode_corpus(
    cfg: StreamCharConfig, corpus_dir: str | Path, out: str | Path, progress: bool = True
) -> dict:
    """Encode every clip of a corpus into the latent cache in ``out`` (resumable)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from streamchar.codecs.audio import build_audio_codec
    from streamchar.codecs.video import video_codec_from_config

    corpus = Corpus(corpus_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timeline = cfg.timeline
    if corpus.timeline["fps"] != timeline.fps or corpus.timeline["sample_rate"] != timeline.sample_rate:
        raise CorpusError(
            f"The corpus runs at {corpus.timeline['fps']} fps / {corpus.timeline['sample_rate']} Hz but the timeline at "
            f"{timeline.fps} fps / {timeline.sample_rate} Hz; use the config the corpus was made with."
        )
    device = cfg.data.encode.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    video_codec = video_codec_from_config(cfg).to(device)
    audio_codec = build_audio_codec(cfg, timeline).to(device)
    check_codecs_fit(timeline, video_codec, audio_codec)
    dtype = {"float16": torch.float16, "float32": torch.float32}.get(cfg.data.encode.dtype)
    if dtype is None:
        raise ValueError(f"data.encode.dtype must be float16 or float32, got '{cfg.data.encode.dtype}'.")
    precision = resolve_mixed_precision(cfg.data.encode.mixed_precision)
    if precision == "fp16":
        raise ValueError(
            "data.encode.mixed_precision must be no, bf16 or auto; fp16 overflows in the encoder."
        )
    buckets = F0Buckets()
    settings = {
        "timeline": to_dict(timeline),
        "codecs": _codec_meta(video_codec, audio_codec),
        "dtype": cfg.data.encode.dtype,
        "mixed_precision": precision,
    }
    settings_path = out / "encode-settings.json"
    if settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        raise CorpusError(f"{out} holds latents made with other codecs or settings; use a new --out folder.")
    write_json_atomic(settings_path, settings)

    shard_names, video_shards = cache_shards(corpus, cfg.data.encode)

    def done(shard: str) -> bool:  # written, with video where it should have it now
        sidecar = (out / _latent_name(shard)).with_suffix(".json")
        if not sidecar.is_file():
            return False
        return shard not in video_shards or all(
            c.get("video", True) for c in json.loads(sidecar.read_text())["clips"]
        )

    todo = [s for s in shard_names if not done(s)]
    bar = tqdm(
        total=sum(1 for c in corpus.clips if c["shard"] in todo),
        desc="encode clips",
        unit="clip",
        disable=not progress,
    )
    for shard in todo:
        tensors: dict[str, torch.Tensor] = {}
        metas = []
        with_video = shard in video_shards
        for entry in (c for c in corpus.clips if c["shard"] == shard):
            clip = corpus.clip(entry, frames=with_video)
            encoded = encode_clip(clip, timeline, video_codec, audio_codec, buckets, dtype,
                                  bf16=precision == "bf16", with_video=with_video)  # fmt: skip
            for name, value in encoded.items():
                tensors[f"{clip.key}/{name}"] = value.contiguous()
            index_entry = dict(entry)
            count = len(clip.frames) if clip.frames is not None else int(clip.meta["num_frames"])
            index_entry.update(
                latent_frames=timeline.video_frames_to_latent_frames(timeline.valid_video_frames(count)),
                audio_tokens=int(tensors[f"{clip.key}/audio"].shape[0]),
                latent_shard=_latent_name(shard),
                video=with_video,
            )
            metas.append({"index": index_entry, "meta": _slim_meta(clip.meta)})
            bar.update(1)
        path = out / _latent_name(shard)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"clips": json.dumps(metas)})
        os.replace(tmp, path)
        write_json_atomic(path.with_suffix(".json"), {"clips": [m["index"] for m in metas]})
    bar.close()

    clips = []
    for shard in shard_names:  # a later run with more shards extends the manifest
        clips.extend(json.loads((out / _latent_name(shard)).with_suffix(".json").read_text())["clips"])
    manifest = {"timeline": to_dict(timeline), "codecs": settings["codecs"], "dtype": cfg.data.encode.dtype,
                "f0_buckets": {"num_buckets": buckets.num_buckets, "f_min": buckets.f_min, "f_max": buckets.f_max},
                "corpus": str(corpus_dir), "clips": clips}  # fmt: skip
    write_json_atomic(out / MANIFEST, manifest)
    return {"clips": len(clips), "shards": len(shard_names), "encoded_now": len(todo), "folder": str(out),
            "latent_frames": sum(c["latent_frames"] for c in clips)}  # fmt: skip


def cache_shards(corpus: Corpus, encode) -> tuple[list[str], set[str]]:
    """The corpus shards a cache holds (``data.encode.audio_max_shards``) and those with video latents too
    (``max_shards``)."""
    names = sorted({c["shard"] for c in corpus.clips})
    video = names if encode.max_shards is None else names[: max(0, encode.max_shards)]
    audio = names if encode.audio_max_shards is None else names[: max(0, encode.audio_max_shards)]
    return sorted(set(audio) | set(video)), set(video)


def _latent_name(corpus_shard: str) -> str:
    return corpus_shard.replace("shard-", "latents-").replace(".tar", ".safetensors")


# -- reading the cache ----------------------------------------------------------------------------
class LatentCache:
    """Random access to the clips of a latent cache (files are memory-mapped by safetensors)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise CorpusError(
                f"{self.folder} has no {MANIFEST}; build the cache with `streamchar data encode` first."
            )
        self.manifest = json.loads(path.read_text())
        self.timeline = Timeline(**self.manifest["timeline"])
        self.clips: list[dict] = self.manifest["clips"]
        self._handles: dict = {}
        self._metas: dict[str, dict] = {}

    def _handle(self, shard: str):
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / shard), framework="pt")
            for item in json.loads(self._handles[shard].metadata()["clips"]):
                self._metas[item["index"]["key"]] = item["meta"]
        return self._handles[shard]

    def window_timeline(self, timeline: Timeline | None) -> Timeline:
        """``timeline`` (its window sizes may differ from the cache's) after checking that its rates match."""
        if timeline is None:
            return self.timeline
        rates = ("fps", "sample_rate", "temporal_factor", "causal_first_frame", "audio_latent_rate")
        changed = [r for r in rates if getattr(timeline, r) != getattr(self.timeline, r)]
        if changed:
            raise CorpusError(
                f"The latent cache {self.folder} was encoded with other rates ({', '.join(changed)}); use the "
                "timeline it was made with, or re-encode."
            )
        return timeline

    def entries(self, split: str | None = None, audio_only: bool = False) -> list[dict]:
        """The clips of ``split`` (None: all) that have video latents; with ``audio_only``, also those that
        hold audio only."""
        return [c for c in self.clips if (split is None or c.get("split") == split)
                and (audio_only or c.get("video", True))]  # fmt: skip

    def tensor(self, entry: dict, name: str) -> torch.Tensor:
        return self._handle(entry["latent_shard"]).get_tensor(f"{entry['key']}/{name}")

    def slice(self, entry: dict, name: str, start: int, stop: int, dim: int = 0) -> torch.Tensor:
        """``tensor[start:stop]`` along ``dim`` (0 or 1), read without loading the whole tensor."""
        sl = self._handle(entry["latent_shard"]).get_slice(f"{entry['key']}/{name}")
        return sl[start:stop] if dim == 0 else sl[:, start:stop]

    def has(self, entry: dict, name: str) -> bool:
        return f"{entry['key']}/{name}" in self._handle(entry["latent_shard"]).keys()

    def meta(self, entry: dict) -> dict:
        self._handle(entry["latent_shard"])
        return self._metas[entry["key"]]

    def __getstate__(self):  # safetensors handles do not pickle; workers reopen them
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


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
