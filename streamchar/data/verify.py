"""Checks that a corpus's ground truth agrees with its audio (``streamchar data verify``).

- Mouth vs energy: Pearson r between the ground-truth mouth opening and the audio's short-time
  energy (RMS per video frame), pooled over the frames of speaking clips; the same within the
  character's speaking turns only (no silences, the harder figure); and the lag (in frames) at
  which the cross-correlation peaks, which is 0 when video and audio are aligned.
- Phonemes vs audio: in 10 ms windows, the share of windows outside every phoneme span that hold
  sound (above -50 dBFS) — silence where there is no phoneme — and the share inside phoneme spans
  that do.
"""

from __future__ import annotations

import numpy as np

from streamchar.data.shards import Corpus

_ACTIVE_DB = -50.0
_WINDOW_S = 0.01


def frame_rms(audio: np.ndarray, samples_per_frame: int, num_frames: int) -> np.ndarray:
    """RMS of the audio under each video frame, ``[num_frames]``."""
    padded = np.zeros(num_frames * samples_per_frame, np.float32)
    n = min(len(audio), len(padded))
    padded[:n] = audio[:n]
    return np.sqrt((padded.reshape(num_frames, samples_per_frame) ** 2).mean(axis=1))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def best_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 5) -> int:
    """The shift of ``b`` relative to ``a`` (in samples) that maximises their correlation."""
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            x, y = a[lag:], b[: len(b) - lag]
        else:
            x, y = a[:lag], b[-lag:]
        scores[lag] = pearson(x, y)
    return max(scores, key=scores.get)


def timing_truth(corpus: Corpus, split: str | None = None, max_clips: int | None = None) -> dict:
    """Agreement of ground truth with audio over (up to ``max_clips``) speaking clips."""
    mouth, energy, speaking = [], [], []
    per_clip_r = []
    outside_active = outside_total = inside_active = inside_total = 0
    outside_peak_db = -120.0
    entries = [e for e in corpus.entries(split) if e.get("speaking_seconds", 1) > 0]
    if max_clips is not None:
        entries = entries[:max_clips]
    if not entries:
        raise ValueError(
            "The corpus has no speaking clips to verify; synthesise some monologues or dialogues."
        )
    for entry in entries:
        reader = corpus.reader(entry["shard"])
        meta, (audio, rate) = reader.meta(entry["key"]), reader.audio(entry["key"])
        gt = reader.ground_truth(entry["key"])
        if "mouth_open" not in gt:
            continue
        fps = meta["fps"]
        spf = rate // fps
        rms = frame_rms(audio, spf, len(gt["mouth_open"]))
        mouth.append(gt["mouth_open"])
        energy.append(rms)
        speaking.append(gt["speaking"].astype(bool))
        per_clip_r.append(pearson(gt["mouth_open"], rms))
        # 10 ms windows against phoneme spans
        hop = int(rate * _WINDOW_S)
        n_win = len(audio) // hop
        win_db = 20 * np.log10(np.sqrt((audio[: n_win * hop].reshape(n_win, hop) ** 2).mean(axis=1)) + 1e-9)
        centres = (np.arange(n_win) + 0.5) * _WINDOW_S
        inside = np.zeros(n_win, bool)
        for _, start, end in meta["phonemes"]:
            inside |= (centres >= start - _WINDOW_S) & (centres < end + _WINDOW_S)
        active = win_db > _ACTIVE_DB
        outside_active += int((active & ~inside).sum())
        outside_total += int((~inside).sum())
        inside_active += int((active & inside).sum())
        inside_total += int(inside.sum())
        if (~inside).any():
            outside_peak_db = max(outside_peak_db, float(win_db[~inside].max()))
    mouth_all, energy_all = np.concatenate(mouth), np.concatenate(energy)
    in_speech = np.concatenate(speaking)
    return {
        "clips": len(per_clip_r),
        "frames": int(len(mouth_all)),
        "mouth_energy_pearson_r": round(pearson(mouth_all, energy_all), 4),
        "mouth_energy_r_median_per_clip": round(float(np.median(per_clip_r)), 4),
        "mouth_energy_r_within_speech": round(pearson(mouth_all[in_speech], energy_all[in_speech]), 4),
        "mouth_energy_best_lag_frames": best_lag(mouth_all, energy_all),
        "outside_phonemes_active_fraction": round(outside_active / max(outside_total, 1), 5),
        "outside_phonemes_peak_db": round(outside_peak_db, 1),
        "inside_phonemes_active_fraction": round(inside_active / max(inside_total, 1), 4),
    }
