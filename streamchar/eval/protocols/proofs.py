"""The proofs each instrument must pass on held-out ground truth before it judges a model:
``streamchar eval prove`` measures every instrument and writes ``OUT.json``, ``OUT.md`` and plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamchar.eval.instruments.train import DEFAULT_ROOT
from streamchar.eval.metrics.features import EvalSplit, load_eval_split
from streamchar.eval.reports.proofs import write_proof_report


def _blur(faces: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return (
        np.stack([gaussian_filter(f.astype(np.float32), (sigma, sigma, 0)) for f in faces])
        .round()
        .clip(0, 255)
        .astype(np.uint8)
    )


def _noise(faces: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (
        (faces.astype(np.float32) + rng.normal(0, sigma, faces.shape)).round().clip(0, 255).astype(np.uint8)
    )


def frechet_proof(
    identity, test: EvalSplit, blurs=(0.5, 1.0, 1.5, 2.0, 3.0), noises=(4.0, 8.0, 16.0, 32.0, 64.0)
) -> dict:
    """Fréchet distance between the two halves of the held-out clips (alternate clips, so both halves hold
    every identity), then with one half blurred or noised at increasing strength."""
    from streamchar.eval.metrics.statistics import frechet_distance

    features = identity.frechet_features
    halves = [
        np.concatenate([test.clip_faces(i).numpy() for i in range(start, len(test.clips), 2)])
        for start in (0, 1)
    ]
    reference, other = features(halves[0]), halves[1]
    result = {
        "frames_per_half": [len(h) for h in halves],
        "halves": round(frechet_distance(reference, features(other)), 4),
        "blur": {str(s): round(frechet_distance(reference, features(_blur(other, s))), 4) for s in blurs},
        "noise": {str(s): round(frechet_distance(reference, features(_noise(other, s))), 4) for s in noises},
    }
    result["monotone"] = all(
        bool(np.all(np.diff([result["halves"], *result[k].values()]) > 0)) for k in ("blur", "noise")
    )
    return result


def heldout_voice_speech(count: int = 60, seed: int = 20261122) -> list[dict]:
    """Held-out sentences spoken by voices drawn with a seed of their own (the corpus draws its voices with
    its own seed from the same ranges, so an exact match is possible but improbable)."""
    from streamchar.data.characters import VOICE_VARIANTS
    from streamchar.data.espeak import PAUSE_PHONEMES, Voice, get_espeak
    from streamchar.data.phonemes import SILENCE_ID, phoneme_id
    from streamchar.data.sentences import SentenceGenerator
    from streamchar.media import resample
    from streamchar.orchestrator.reader import SAMPLE_RATE

    rng = np.random.default_rng(seed)
    sentences = SentenceGenerator(np.random.default_rng(seed + 1))
    espeak = get_espeak()
    out = []
    for _ in range(count):
        voice = Voice(
            language="en-us" if rng.random() < 0.75 else "en",
            variant=VOICE_VARIANTS[rng.integers(len(VOICE_VARIANTS))],
            pitch=int(rng.integers(25, 76)),
            pitch_range=int(rng.integers(35, 91)),
            rate=int(rng.integers(140, 196)),
        )
        text = sentences.sentence("test")
        utterance = espeak.synthesize(text, voice)
        ids = [phoneme_id(p.label) for p in utterance.phonemes if p.label not in PAUSE_PHONEMES]
        audio = resample(utterance.samples, utterance.sample_rate, SAMPLE_RATE)
        ids = [i for i in ids if i != SILENCE_ID]
        out.append({"audio": audio, "transcript": text, "phoneme_ids": ids, "voice": voice.to_dict()})
    return out


def recognizer_proof(recognizer, test: EvalSplit, heldout_voices: list[dict]) -> dict:
    from streamchar.eval.instruments.recognizer import evaluate_recognizer
    from streamchar.eval.metrics.error_rates import error_rate, normalise_words

    result = {"heldout_identities": evaluate_recognizer(recognizer, test)}
    phones, words = [], []
    for item in heldout_voices:
        hypothesis = recognizer.phonemes(item["audio"])
        phones.append((item["phoneme_ids"], hypothesis))
        words.append(
            (
                normalise_words(item["transcript"]),
                recognizer.lexicon.decode(hypothesis, recognizer.word_penalty),
            )
        )
    result["heldout_voices_and_sentences"] = {
        "utterances": len(heldout_voices), "per": round(error_rate(phones), 4), "wer": round(error_rate(words), 4),
    }  # fmt: skip
    vocabulary = set(recognizer.lexicon.words)
    references = [
        w for c in test.clips if c.get("kind") == "monologue" for w in normalise_words(c["transcript"])
    ]
    result["test_oov_rate"] = round(float(np.mean([w not in vocabulary for w in references])), 4)
    return result


def prove_instruments(cache: str | Path, root: str | Path = DEFAULT_ROOT, out: str | Path | None = None,
                      heldout_voices: int = 60) -> dict:  # fmt: skip
    """Every instrument's proof on held-out ground truth; writes OUT.json / OUT.md / OUT_*.png."""
    from streamchar.eval.instruments.encoders import (
        evaluate_identity_encoder,
        evaluate_speaker_encoder,
        load_identity_encoder,
        load_speaker_encoder,
    )  # fmt: skip
    from streamchar.eval.instruments.mouth_probe import load_mouth_reader
    from streamchar.eval.instruments.recognizer import load_recognizer
    from streamchar.eval.instruments.sync_expert import evaluate_sync_expert, load_sync_expert
    from streamchar.eval.metrics.statistics import pearson

    root = Path(root)
    test = load_eval_split(cache, "test")
    result: dict = {"cache": str(cache)}
    result["recognizer"] = recognizer_proof(
        load_recognizer(root / "recognizer", words=True), test, heldout_voice_speech(heldout_voices)
    )
    result["sync"] = evaluate_sync_expert(
        load_sync_expert(root / "sync"), test, shifts=(0, 1, 2, 3, 4, 5, 7, 10)
    )
    identity = load_identity_encoder(root / "identity")
    result["identity"] = evaluate_identity_encoder(identity, test)
    result["speaker"] = evaluate_speaker_encoder(load_speaker_encoder(root / "speaker"), test)
    result["frechet"] = frechet_proof(identity, test)
    reader = load_mouth_reader(root / "mouth")
    result["mouth_probe"] = {
        "pearson_r": round(pearson(reader.predict(test.mouth), test.mouth_open.float().numpy()), 4)
    }
    if out is not None:
        write_proof_report(result, out)
    return result
