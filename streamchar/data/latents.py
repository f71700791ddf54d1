"""The latent cache: writing it (``streamchar data encode``) and reading it (:class:`LatentCache`).

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

The training windows drawn from it are in :mod:`streamchar.data.windows`.
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
from streamchar.data.shards import Corpus, CorpusError, read_manifest, write_json_atomic
from streamchar.precision import resolve_mixed_precision
from streamchar.timeline import Timeline

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
        self.manifest = read_manifest(
            self.folder, MANIFEST, "build the cache with `streamchar data encode` first."
        )
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

    def f0_buckets(self) -> F0Buckets:
        """The F0 buckets the cache's frame units were made with (``unit = phoneme x buckets.size + bucket``)."""
        buckets = self.manifest.get("f0_buckets", {})
        return F0Buckets(**buckets) if buckets else F0Buckets()

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
