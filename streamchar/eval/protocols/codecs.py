"""Codec measurements (``streamchar codec eval``).

- Video: PSNR of encode -> decode over every frame of up to ``max_clips`` clips of a split (by
  default ``test``, the held-out identities), overall and per style.
- Audio: the round trip encode -> decode -> encode of the audio codec on the same clips' speech:
  the mean absolute log-mel difference in dB, and the spectral convergence
  ``||S - S_hat||_F / ||S||_F`` of linear STFT magnitudes of the original and decoded waveforms.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from streamchar.config import StreamCharConfig
from streamchar.data.shards import Corpus


def _entries(corpus: Corpus, split: str, max_clips: int | None, speaking: bool = False) -> list[dict]:
    entries = corpus.entries(split)
    if speaking:
        entries = [
            e for e in entries if e.get("speaking_seconds") is None or e.get("speaking_seconds", 0) > 0
        ]
    return entries[:max_clips] if max_clips else entries


def evaluate_video_codec(codec, corpus: Corpus, split: str, max_clips: int | None) -> dict:
    per_style: dict[str, list[float]] = {}
    total_sq, total_n, frames = 0.0, 0, 0
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    for entry in tqdm(_entries(corpus, split, max_clips), desc="video codec", unit="clip", leave=False):
        clip_frames = corpus.reader(entry["shard"]).frames(entry["key"])
        recon = codec.decode(codec.encode(clip_frames)).cpu().numpy()
        n = min(len(recon), len(clip_frames))
        err = (recon[:n].astype(np.float64) - clip_frames[:n]) ** 2
        total_sq += err.sum()
        total_n += err.size
        frames += n
        mse = err.mean()
        per_style.setdefault(entry.get("style", "?"), []).append(10 * math.log10(255**2 / max(mse, 1e-12)))
    if not total_n:
        raise ValueError(f"The corpus has no '{split}' clips to evaluate.")
    mse = total_sq / total_n
    return {
        "split": split,
        "clips": sum(len(v) for v in per_style.values()),
        "frames": frames,
        "psnr_db": round(10 * math.log10(255**2 / mse), 3),
        "psnr_db_by_style": {k: round(float(np.mean(v)), 3) for k, v in sorted(per_style.items())},
        "seconds_per_frame": round((time.perf_counter() - t0) / max(frames, 1), 5),
    }


def evaluate_audio_codec(codec, corpus: Corpus, split: str, max_clips: int | None) -> dict:
    from streamchar.codecs.audio import MelCodec

    analysis = MelCodec(sample_rate=codec.sample_rate, samples_per_token=codec.samples_per_token)
    logmel_db, convergence, seconds = [], [], 0.0
    decode_time = 0.0
    from tqdm.auto import tqdm

    for entry in tqdm(
        _entries(corpus, split, max_clips, speaking=True), desc="audio codec", unit="clip", leave=False
    ):
        audio, _ = corpus.reader(entry["shard"]).audio(entry["key"])
        tokens = len(audio) // codec.samples_per_token
        if tokens == 0:
            continue
        wave = torch.from_numpy(audio[: tokens * codec.samples_per_token])
        latents = codec.encode(wave)
        t0 = time.perf_counter()
        decoded = codec.decode(latents)
        decode_time += time.perf_counter() - t0
        seconds += len(wave) / codec.sample_rate
        a = analysis.log_mel(wave)
        b = analysis.log_mel(decoded)
        logmel_db.append(float((a - b).abs().mean()) * 20 / math.log(10))
        s = analysis.stft(wave[None]).abs()
        s_hat = analysis.stft(decoded[None].float()).abs()
        convergence.append(float(torch.linalg.norm(s - s_hat) / torch.linalg.norm(s)))
    if not logmel_db:
        raise ValueError(f"The corpus has no '{split}' clips with speech to evaluate.")
    return {
        "kind": codec.kind,
        "clips": len(logmel_db),
        "audio_seconds": round(seconds, 2),
        "logmel_l1_db": round(float(np.mean(logmel_db)), 3),
        "spectral_convergence": round(float(np.mean(convergence)), 4),
        "decode_real_time_factor": round(decode_time / max(seconds, 1e-9), 4),
    }


def evaluate_codecs(
    cfg: StreamCharConfig,
    data: str | Path,
    split: str = "test",
    max_clips: int | None = 24,
    audio_only: bool = False,
) -> dict:
    from streamchar.codecs.audio import build_audio_codec
    from streamchar.codecs.video import video_codec_from_config

    corpus = Corpus(data)
    result: dict = {"corpus": str(data)}
    if not audio_only:
        codec = video_codec_from_config(cfg)
        result["video"] = {
            "codec": cfg.video_codec.path,
            **evaluate_video_codec(codec, corpus, split, max_clips),
        }
    result["audio"] = evaluate_audio_codec(build_audio_codec(cfg, cfg.timeline), corpus, split, max_clips)
    return result
