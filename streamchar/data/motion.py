"""Per-frame motion of a synthetic character: mouth articulation, blinks, brows, gaze, head pose.

Mouth: every phoneme becomes one viseme segment (diphthongs two), gaps become silence, and the
articulation parameters are a dominance-weighted blend of the segments' targets (the
Cohen-Massaro coarticulation model): a segment's dominance is ``alpha * exp(-theta * d)`` at
distance ``d`` seconds outside it, so strong segments (lip closures) hold their shape and weak
ones (tongue-internal consonants) take the shape of their neighbours. Bilabials additionally
gate the opening to zero, since lips that must meet do meet. Tracks are evaluated at 400 Hz and
averaged over each video frame, as a camera integrates over its shutter.

Non-verbal motion follows speech: head sway grows with the speech envelope and nods at stressed
words; brows lift at phrase onsets and emphasis; blinks cluster at pauses; while listening the
character idles, nods at the end of the partner's phrases and looks towards the partner.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from streamchar.data.characters import FaceState, Identity
from streamchar.data.phonemes import VISEME_TARGETS, VISEME_TO_ID, phoneme_visemes

_FINE_RATE = 400  # Hz, the rate tracks are evaluated at before averaging per frame
_ARTICULATION = ("open", "width", "round", "teeth", "tongue")


@dataclass
class MotionTracks:
    """Per-frame tracks, each ``[T]``. Pose in degrees; articulation in [0, 1]."""

    open: np.ndarray
    width: np.ndarray
    round: np.ndarray
    teeth: np.ndarray
    tongue: np.ndarray
    smile: np.ndarray
    blink: np.ndarray
    brow: np.ndarray
    gaze_x: np.ndarray
    gaze_y: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    shift_x: np.ndarray
    shift_y: np.ndarray
    viseme: np.ndarray  # int64, the viseme at each frame's centre
    speaking: np.ndarray  # bool, inside one of the character's own turns

    @property
    def num_frames(self) -> int:
        return len(self.open)

    def state(self, k: int) -> FaceState:
        names = [f.name for f in fields(FaceState)]
        return FaceState(**{name: float(getattr(self, name)[k]) for name in names})

    def ground_truth(self) -> dict[str, np.ndarray]:
        """The per-frame ground truth stored with every clip."""
        return {
            "viseme": self.viseme.astype(np.int8),
            "mouth_open": self.open.astype(np.float32),
            "mouth_width": self.width.astype(np.float32),
            "mouth_round": self.round.astype(np.float32),
            "speaking": self.speaking.astype(np.uint8),
            "head_pose": np.stack([self.yaw, self.pitch, self.roll], axis=1).astype(np.float32),
            "blink": self.blink.astype(np.float32),
            "brow": self.brow.astype(np.float32),
        }


# -- articulation ---------------------------------------------------------------------------------
def viseme_segments(
    phonemes: list[tuple[str, float, float]], duration: float, emphasis: list[float] | None = None
) -> list[tuple[str, float, float, float]]:
    """Viseme segments ``(viseme, start, end, emphasis)`` tiling ``[0, duration]``: one per phoneme,
    two per diphthong, silence between."""
    segments: list[tuple[str, float, float, float]] = []
    cursor = 0.0
    weights = emphasis if emphasis is not None else [1.0] * len(phonemes)
    for (label, start, end), weight in sorted(zip(phonemes, weights, strict=True), key=lambda p: p[0][1]):
        start, end = max(start, cursor), min(end, duration)
        if end <= start:
            continue
        if start > cursor + 1e-6:
            segments.append(("sil", cursor, start, 1.0))
        visemes = phoneme_visemes(label)
        step = (end - start) / len(visemes)
        for k, vis in enumerate(visemes):
            segments.append((vis, start + k * step, start + (k + 1) * step, weight))
        cursor = end
    if cursor < duration - 1e-6:
        segments.append(("sil", cursor, duration, 1.0))
    return segments


def articulation_emphasis(
    phonemes: list[tuple[str, float, float]], audio: np.ndarray, sample_rate: int
) -> list[float]:
    """Stress proxy per phoneme: louder-than-usual phonemes are articulated wider.

    Each phoneme's RMS is compared with the median RMS of phonemes of the same viseme in the
    utterance, so the factor carries stress and loudness only, never the phoneme class:
    ``sqrt(rms / median)`` clipped to [0.6, 1.4].
    """
    rms = []
    for _, start, end in phonemes:
        seg = audio[int(start * sample_rate) : int(end * sample_rate)]
        rms.append(float(np.sqrt(np.mean(seg**2))) if len(seg) else 0.0)
    classes = [phoneme_visemes(label)[0] for label, _, _ in phonemes]
    medians = {}
    for cls in set(classes):
        values = [r for r, c in zip(rms, classes, strict=True) if c == cls and r > 0]
        medians[cls] = float(np.median(values)) if values else 0.0
    return [
        float(np.clip(np.sqrt(r / medians[c]), 0.6, 1.4)) if medians[c] > 0 else 1.0
        for r, c in zip(rms, classes, strict=True)
    ]


def _frame_average(fine: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """Average a track sampled at ``_FINE_RATE`` over each frame's interval."""
    per_frame = _FINE_RATE / fps
    edges = np.round(np.arange(num_frames + 1) * per_frame).astype(np.int64)
    edges = np.clip(edges, 0, len(fine))
    csum = np.concatenate([[0.0], np.cumsum(fine, dtype=np.float64)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    return ((csum[edges[1:]] - csum[edges[:-1]]) / counts).astype(np.float32)


def articulation_tracks(
    phonemes: list[tuple[str, float, float]], num_frames: int, fps: float, emphasis: list[float] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mouth parameters per frame (``open``, ``width``, ``round``, ``teeth``, ``tongue``) and the
    viseme id at each frame's centre. ``emphasis`` scales each phoneme's target opening."""
    duration = num_frames / fps
    segments = viseme_segments(phonemes, duration, emphasis)
    t = (np.arange(int(np.ceil(duration * _FINE_RATE))) + 0.5) / _FINE_RATE  # [F]
    starts = np.array([seg[1] for seg in segments])[:, None]  # [S, 1]
    ends = np.array([seg[2] for seg in segments])[:, None]
    targets = [VISEME_TARGETS[v] for v, _, _, _ in segments]
    alpha = np.array([tg.dominance for tg in targets])[:, None]
    theta = np.array([tg.sharpness for tg in targets])[:, None]
    dist = np.maximum(0.0, np.maximum(starts - t[None], t[None] - ends))  # [S, F]
    weight = alpha * np.exp(-theta * dist)
    weight /= weight.sum(axis=0, keepdims=True)
    values = {name: np.array([getattr(tg, name) for tg in targets]) for name in _ARTICULATION}
    values["open"] = values["open"] * np.array([seg[3] for seg in segments])
    fine = {name: (weight * values[name][:, None]).sum(axis=0) for name in _ARTICULATION}
    # lips that must meet do meet: gate the opening inside bilabial segments, with 15 ms ramps
    closure = np.zeros_like(t)
    for vis, s, e, _ in segments:
        if vis == "PP":
            ramp = np.clip(np.minimum(t - s, e - t) / 0.015 + 0.5, 0, 1)
            closure = np.maximum(closure, ramp)
    fine["open"] = fine["open"] * (1 - closure)
    tracks = {name: _frame_average(fine[name], num_frames, fps) for name in _ARTICULATION}
    centres = (np.arange(num_frames) + 0.5) / fps
    seg_index = np.clip(np.searchsorted(ends[:, 0], centres, side="right"), 0, len(segments) - 1)
    visemes = np.array([VISEME_TO_ID[segments[i][0]] for i in seg_index], dtype=np.int64)
    return tracks, visemes


# -- non-verbal motion ----------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, n: int, fps: float, sigma_s: float) -> np.ndarray:
    """Unit-variance noise low-passed with a Gaussian of ``sigma_s`` seconds."""
    sigma = max(sigma_s * fps, 1e-3)
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    noise = rng.standard_normal(n + 2 * radius)
    out = np.convolve(noise, kernel, mode="valid")[:n]
    return out / (out.std() + 1e-8)


def _bump(times: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A raised-cosine bump of total ``width`` seconds centred on ``centre``."""
    x = (times - centre) / (width / 2)
    return np.where(np.abs(x) < 1, 0.5 * (1 + np.cos(np.pi * x)), 0.0)


def _spans_mask(times: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(len(times), dtype=bool)
    for s, e in spans:
        mask |= (times >= s) & (times < e)
    return mask


def _blink_track(
    rng: np.random.Generator, times: np.ndarray, fps: float, rate: float, pauses: list[float]
) -> np.ndarray:
    """Blinks: a Poisson process plus blinks at pauses; 70 ms closing, 130 ms opening."""
    duration = times[-1] + 1 / fps if len(times) else 0.0
    onsets: list[float] = []
    t = rng.exponential(1 / rate) * rng.uniform(0.2, 1.0)
    while t < duration:
        onsets.append(t)
        if rng.random() < 0.12:  # double blink
            onsets.append(t + 0.28)
        t += max(0.6, rng.exponential(1 / rate))
    onsets += [p + rng.uniform(-0.05, 0.1) for p in pauses if rng.random() < 0.45]
    fine_t = (np.arange(int(np.ceil(duration * _FINE_RATE))) + 0.5) / _FINE_RATE
    blink = np.zeros_like(fine_t)
    for onset in onsets:
        rel = fine_t - onset
        closing = np.clip(rel / 0.07, 0, 1)
        opening = np.clip(1 - (rel - 0.09) / 0.13, 0, 1)
        shape = np.where(rel < 0, 0, np.where(rel < 0.09, closing, opening))
        blink = np.maximum(blink, shape)
    return _frame_average(blink, len(times), fps)


def motion_tracks(
    rng: np.random.Generator,
    identity: Identity,
    num_frames: int,
    fps: float,
    phonemes: list[tuple[str, float, float]],
    words: list[tuple[str, float, float]],
    own_turns: list[tuple[float, float]],
    partner_turns: list[tuple[float, float]] = (),
    partner_side: float = 0.0,
    energy: np.ndarray | None = None,
    emphasis: list[float] | None = None,
) -> MotionTracks:
    """All motion tracks for one character over ``num_frames`` frames.

    Args:
        phonemes, words: the character's own speech, ``(label, start_s, end_s)``.
        own_turns: spans in which the character speaks; ``partner_turns``: spans in which the
            other character of a dialogue speaks (the character listens).
        partner_side: -1 / +1 when the partner sits to the viewer's left / right, 0 if none.
        energy: the character's speech envelope per frame in [0, 1] (``None``: from phonemes).
        emphasis: per-phoneme articulation scale (see :func:`articulation_emphasis`).
    """
    times = (np.arange(num_frames) + 0.5) / fps
    artic, visemes = articulation_tracks(phonemes, num_frames, fps, emphasis)
    open_ = np.clip(artic["open"] * identity.expressiveness, 0, 1.2)
    speaking = _spans_mask(times, own_turns)
    listening = _spans_mask(times, list(partner_turns)) & ~speaking
    if energy is None:
        energy = (visemes != VISEME_TO_ID["sil"]).astype(np.float32)
    envelope = np.convolve(energy, np.ones(7) / 7, mode="same")

    amp = identity.head_motion
    sway = 0.35 + 0.65 * envelope + 0.2 * listening
    yaw = amp * (3.0 * _smooth_noise(rng, num_frames, fps, 0.6) * sway + 4.0 * partner_side * listening)
    pitch = amp * 1.6 * _smooth_noise(rng, num_frames, fps, 0.5) * sway
    roll = amp * 1.8 * _smooth_noise(rng, num_frames, fps, 0.9) * (0.5 + 0.5 * sway)
    brow = 0.15 * _smooth_noise(rng, num_frames, fps, 0.8)
    pauses: list[float] = []

    # speech-driven: nods on some stressed (long) words, brows at phrase onsets and emphasis
    for k, (_, ws, we) in enumerate(words):
        long_word = (we - ws) > 0.28
        if long_word and rng.random() < 0.35:
            pitch += amp * rng.uniform(2.0, 4.5) * _bump(times, ws + 0.08, 0.35)
        if long_word and rng.random() < 0.25:
            brow += rng.uniform(0.4, 0.9) * _bump(times, ws + 0.05, 0.45)
        if k + 1 < len(words) and words[k + 1][1] - we > 0.15:
            pauses.append(we)
    for ts, te in own_turns:
        brow += rng.uniform(0.3, 0.8) * _bump(times, ts + 0.1, 0.5)
        pauses.append(te)
    # listening: nods at the end of the partner's phrases, the occasional brow raise
    for ps, pe in partner_turns:
        if rng.random() < 0.7:
            depth = rng.uniform(3.0, 6.0)
            pitch += amp * depth * _bump(times, pe - 0.1, 0.45)
            if rng.random() < 0.4:
                pitch += amp * depth * 0.7 * _bump(times, pe + 0.35, 0.4)
        if rng.random() < 0.3:
            brow += rng.uniform(0.3, 0.6) * _bump(times, rng.uniform(ps, pe), 0.6)
    # gaze: fixations with saccades between them, towards the partner while listening
    gaze_x = np.zeros(num_frames)
    gaze_y = np.zeros(num_frames)
    k = 0
    while k < num_frames:
        hold = int(rng.uniform(0.4, 2.5) * fps) + 1
        gaze_x[k : k + hold] = rng.normal(0, 0.3)
        gaze_y[k : k + hold] = rng.normal(0, 0.2)
        k += hold
    gaze_x = np.clip(gaze_x + 0.5 * partner_side * listening, -1, 1)
    smile = np.clip(0.2 + 0.25 * _smooth_noise(rng, num_frames, fps, 1.5) + 0.2 * listening, -0.3, 1.0)
    blink = _blink_track(rng, times, fps, identity.blink_rate, pauses)
    shift_x = 0.006 * amp * _smooth_noise(rng, num_frames, fps, 1.0)
    shift_y = 0.004 * amp * _smooth_noise(rng, num_frames, fps, 0.7) + pitch * 0.0008

    return MotionTracks(
        open=open_.astype(np.float32),
        width=artic["width"],
        round=artic["round"],
        teeth=artic["teeth"],
        tongue=artic["tongue"],
        smile=smile.astype(np.float32),
        blink=blink,
        brow=np.clip(brow, -1, 1).astype(np.float32),
        gaze_x=gaze_x.astype(np.float32),
        gaze_y=np.clip(gaze_y, -1, 1).astype(np.float32),
        yaw=yaw.astype(np.float32),
        pitch=pitch.astype(np.float32),
        roll=roll.astype(np.float32),
        shift_x=shift_x.astype(np.float32),
        shift_y=shift_y.astype(np.float32),
        viseme=visemes,
        speaking=speaking,
    )
