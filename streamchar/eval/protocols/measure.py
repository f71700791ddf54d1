"""What a protocol measures on one stretch of generated (or ground-truth) frames and speech.

:class:`Instruments` holds the trained instruments (and any published models given by local path);
:func:`measure` gives every per-clip metric of frames and audio that should say a text, :func:`summarise`
the corpus-level figures of many clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamchar.eval.metrics.features import INSTRUMENT_TIMELINE


@dataclass
class Instruments:
    recognizer: object
    sync: object
    identity: object
    speaker: object
    mouth: object
    external: dict = field(default_factory=dict)  # published models given by local path (Instruments.load)

    @classmethod
    def load(cls, root: str | Path, external: dict[str, str] | None = None) -> Instruments:
        from streamchar.eval.instruments.encoders import load_identity_encoder, load_speaker_encoder
        from streamchar.eval.instruments.mouth_probe import load_mouth_reader
        from streamchar.eval.instruments.recognizer import load_recognizer
        from streamchar.eval.instruments.sync_expert import load_sync_expert
        from streamchar.eval.published.speech import load_wavlm_sv, load_whisper
        from streamchar.eval.published.syncnet import load_syncnet
        from streamchar.eval.published.vision import load_arcface, load_i3d, load_inception

        loaders = {"whisper": load_whisper, "syncnet": load_syncnet, "wavlm": load_wavlm_sv,
                   "arcface": load_arcface, "inception": load_inception, "i3d": load_i3d}  # fmt: skip
        published = {name: loaders[name](path) for name, path in (external or {}).items() if path}
        root = Path(root)
        return cls(load_recognizer(root / "recognizer", words=True), load_sync_expert(root / "sync"),
                   load_identity_encoder(root / "identity"), load_speaker_encoder(root / "speaker"),
                   load_mouth_reader(root / "mouth"), published)  # fmt: skip


def measure_external(published: dict, frames: np.ndarray, audio: np.ndarray, text: str, reference_image: np.ndarray,
                     reference_voice: np.ndarray | None) -> dict:  # fmt: skip
    """The per-clip metrics of the published models that were given: Whisper WER, the official SyncNet's
    Sync-C/D/offset (its own sign convention: positive = audio ahead), ArcFace and WavLM similarity."""
    from streamchar.eval.metrics.error_rates import edit_distance, normalise_words

    out: dict = {}
    if "whisper" in published:
        words = normalise_words(text)
        window = INSTRUMENT_TIMELINE.seconds_to_samples(30)  # Whisper hears at most 30 s at a time
        heard = [
            w
            for s in range(0, max(1, len(audio)), window)
            for w in normalise_words(published["whisper"].transcribe(audio[s : s + window]))
        ]
        out["whisper_word_edits"], out["whisper_words"] = edit_distance(words, heard), len(words)
    if "syncnet" in published and len(frames) >= 35:
        scores = published["syncnet"].sync_scores(frames, audio)
        out.update(
            {"syncnet_offset": scores["offset"], "syncnet_c": scores["sync_c"], "syncnet_d": scores["sync_d"]}
        )
    if "arcface" in published:
        picks = frames[:: max(1, len(frames) // 16)]
        out["arcface_sim"] = float(
            (published["arcface"].embed(picks) @ published["arcface"].embed(reference_image[None]).T).mean()
        )
    if "wavlm" in published and reference_voice is not None:
        out["wavlm_sim"] = float(published["wavlm"].similarity(audio, reference_voice))
    return out


def published_frechet(
    published: dict, generated: list[np.ndarray], truth: list[np.ndarray], video_frames: int = 16
) -> dict:
    """FID (Inception) over frames and FVD (I3D) over 16-frame pieces of each clip, generated against ground
    truth (lists of ``uint8 [T, H, W, 3]`` clips)."""
    from streamchar.eval.metrics.statistics import frechet_distance

    def pieces(clips):
        return np.concatenate(
            [
                c[: len(c) // video_frames * video_frames].reshape(-1, video_frames, *c.shape[1:])
                for c in clips
            ]
        )

    out = {}
    if "inception" in published:
        fid = frechet_distance(published["inception"].features(np.concatenate(generated)),
                               published["inception"].features(np.concatenate(truth)))  # fmt: skip
        out["fid"] = round(fid, 3)
    if "i3d" in published:
        out["fvd"] = round(
            frechet_distance(
                published["i3d"].features(pieces(generated)), published["i3d"].features(pieces(truth))
            ),
            3,
        )
    return out


def reference_phonemes(text: str, language: str = "en-us") -> list[int]:
    """espeak's phoneme ids for ``text`` (silences dropped): the PER reference."""
    from streamchar.data.phonemes import SILENCE_ID, phoneme_id
    from streamchar.data.phonemizer import get_phonemizer

    ids = [phoneme_id(p) for group in get_phonemizer().words(text, language) for p in group]
    return [i for i in ids if i != SILENCE_ID]


def measure_speech(inst: Instruments, audio: np.ndarray, text: str, reference_voice: np.ndarray | None,
                   phonemes: list[int] | None = None) -> dict:  # fmt: skip
    """The speech metrics of 16 kHz audio that should say ``text``: phoneme and word edits (against espeak's
    phonemes of the text, or ``phonemes``), the recognizer's transcript, voice similarity to the reference."""
    from streamchar.eval.metrics.error_rates import edit_distance, normalise_words

    out: dict = {}
    hypothesis = inst.recognizer.phonemes(audio)
    reference = phonemes if phonemes is not None else reference_phonemes(text)
    words = normalise_words(text)
    out["phoneme_edits"], out["phonemes"] = edit_distance(reference, hypothesis), len(reference)
    recognized = inst.recognizer.lexicon.decode(hypothesis, inst.recognizer.word_penalty)
    out["word_edits"], out["words"] = edit_distance(words, recognized), len(words)
    out["transcript"] = " ".join(recognized)
    if reference_voice is not None and len(audio) >= INSTRUMENT_TIMELINE.seconds_to_samples(0.5):
        out["voice_sim"] = float(inst.speaker.embed_audio(audio) @ inst.speaker.embed_audio(reference_voice))
    return out


def measure(inst: Instruments, frames: np.ndarray, audio: np.ndarray, text: str, reference_image: np.ndarray,
            reference_voice: np.ndarray | None, true_open: np.ndarray | None,
            phonemes: list[int] | None = None) -> dict:  # fmt: skip
    """Every per-clip metric of one stretch of frames and audio at the instruments' rates
    (:data:`INSTRUMENT_TIMELINE`: 25 fps, 16 kHz) that should say ``text``."""
    from streamchar.eval.instruments.sync_expert import MAX_OFFSET, WINDOW, sync_scores_of
    from streamchar.eval.metrics.statistics import pearson

    out: dict = {
        "seconds": round(INSTRUMENT_TIMELINE.video_frames_to_seconds(len(frames)), 2),
        **measure_speech(inst, audio, text, reference_voice, phonemes),
    }
    if len(frames) >= WINDOW + 2 * MAX_OFFSET:
        scores = sync_scores_of(inst.sync, frames, audio)  # offset, sync_c, sync_d, sync_c0
        out.update({"sync_offset" if k == "offset" else k: v for k, v in scores.items()})
    if true_open is not None:
        from streamchar.eval.metrics.features import mouth_crops

        n = min(len(frames), len(true_open))
        out["mouth_r"] = pearson(inst.mouth.predict(mouth_crops(frames[:n])), true_open[:n])
    out["frame_change"], out["sharpness"] = frame_change(frames), sharpness(frames)
    picks = frames[:: max(1, len(frames) // 32)]
    ref = inst.identity.embed_frames(reference_image[None])
    out["identity_sim"] = float((inst.identity.embed_frames(picks) @ ref.T).mean())
    if inst.external:
        out.update(measure_external(inst.external, frames, audio, text, reference_image, reference_voice))
    return out


def frame_change(frames: np.ndarray) -> float:
    """How much a clip's frames ``uint8 [T, H, W, 3]`` change from one to the next: the mean absolute difference
    of consecutive frames, in 8-bit levels per pixel and channel. A talking head that holds still but for its
    mouth, eyes and a little head motion changes little (the tiny corpus's ground truth about 0.5); frames that
    shimmer (edges shifting by a pixel, a noisy texture) change more, which no per-frame metric sees."""
    if len(frames) < 2:
        return float("nan")
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def sharpness(frames: np.ndarray, every: int = 4) -> float:
    """How much fine detail frames ``uint8 [T, H, W, 3]`` hold: the mean absolute 4-neighbour Laplacian of their
    luma (every ``every``-th frame), in 8-bit levels. A regression prior's blur lowers it; noise raises it."""
    luma = frames[::every].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    centre = luma[:, 1:-1, 1:-1]
    laplacian = 4 * centre - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1] - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:]
    return float(np.abs(laplacian).mean())


def summarise(rows: list[dict]) -> dict:
    """Corpus-level PER/WER (edits over reference length) and means of the other per-clip metrics."""
    result = {"clips": len(rows)}
    if rows:
        result["per"] = round(
            sum(r["phoneme_edits"] for r in rows) / max(1, sum(r["phonemes"] for r in rows)), 4
        )
        result["wer"] = round(sum(r["word_edits"] for r in rows) / max(1, sum(r["words"] for r in rows)), 4)
    if rows and "whisper_words" in rows[0]:
        result["whisper_wer"] = round(
            sum(r["whisper_word_edits"] for r in rows) / max(1, sum(r["whisper_words"] for r in rows)), 4
        )
    for key in (
        "sync_c",
        "sync_d",
        "sync_c0",
        "mouth_r",
        "identity_sim",
        "voice_sim",
        "syncnet_c",
        "syncnet_d",
        "arcface_sim",
        "wavlm_sim",
        "frame_change",
        "sharpness",
    ):
        values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        if values:
            result[key] = round(float(np.mean(values)), 4)
    offsets = [r["sync_offset"] for r in rows if "sync_offset" in r]
    if offsets:
        result["sync_offset_median"] = float(np.median(offsets))
        result["sync_offset_within_1"] = round(float(np.mean(np.abs(offsets) <= 1)), 4)
    return result
