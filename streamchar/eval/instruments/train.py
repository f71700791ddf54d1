"""Training the evaluation instruments by name: ``streamchar eval train NAME`` trains one instrument on the
evaluation cache's training split, scores it on the test split and saves it to ``checkpoints/eval/NAME`` with
a model card.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from streamchar.eval.metrics.features import EvalSplit, load_eval_split

logger = logging.getLogger(__name__)

INSTRUMENTS = ("recognizer", "sync", "identity", "speaker", "mouth")
DEFAULT_ROOT = "checkpoints/eval"
DEFAULT_STEPS = {"recognizer": 1500, "sync": 3000, "identity": 1200, "speaker": 2000, "mouth": 1500}

_CARDS = {
    "recognizer": (
        "CTC phoneme recognizer",
        "Reads 16 kHz speech (80 log-mel bands, 100 frames/s) and emits phoneme posteriors (50/s) over "
        "StreamChar's espeak phoneme inventory; words come from lexicon decoding with `lexicon.tsv.gz` (the "
        "generator's closed word classes and the words of the training transcripts).",
        "Transcript fidelity (PER, WER) of generated speech; pointer re-alignment.",
        "Knows only espeak-ng English voices; words outside the lexicon are always errors; homophones are "
        "indistinguishable.",
    ),
    "sync": (
        "SyncNet-style audio-visual sync expert",
        "Embeds 5 grey mouth windows (24 x 32, 0.2 s at 25 fps) and the 20 log-mel frames of the same 0.2 s; "
        "trained contrastively against the same clip's audio shifted by up to ±15 frames.",
        "Sync-C, Sync-D and the audio-video offset of generated clips.",
        "Knows only the synthetic characters' mouths at the corpus framing (mouth in the lower middle).",
    ),
    "identity": (
        "Identity encoder",
        "Maps a 64 x 64 frame to a 128-d unit vector (CosFace over the training identities); its 192-d "
        "pooled features are the Fréchet distance's fixed features.",
        "Identity similarity to the reference image; Fréchet distance of generated frames.",
        "Knows only the synthetic corpus's drawing styles.",
    ),
    "mouth": (
        "Mouth-opening reader",
        "A small CNN from the grey mouth window (24 x 32, each window normalised) to the synthetic renderer's "
        "mouth opening, trained with mean squared error on the training identities' frames.",
        "Mouth-opening correlation of generated video with the opening its planned phonemes call for.",
        "Knows only the synthetic characters' mouths at the corpus framing.",
    ),
    "speaker": (
        "Speaker encoder",
        "Maps log-mel speech to a 128-d unit vector (mean and std pooling, CosFace over the training voices).",
        "Voice similarity of generated speech to the reference voice.",
        "Knows only espeak-ng voices (variant, pitch, range, rate).",
    ),
}


def _card(name: str, scores: dict, steps: int, seconds: float, cache: str) -> str:
    title, what, use, limits = _CARDS[name]
    return (
        f"# StreamChar evaluation instrument: {title}\n\n{what}\n\n"
        f"- **Data**: the training split of the synthetic corpus behind `{cache}` (ground-truth clips only, "
        "never generated media); held-out identities and sentences for the scores below.\n"
        f"- **Training budget**: {steps} steps, {seconds / 60:.1f} min on a 2-core CPU.\n"
        f"- **Scores on held-out ground truth**: `{json.dumps(scores)}`\n"
        f"- **Intended use**: {use}\n- **Limitations**: {limits}\n\n"
        "Reproduce: `streamchar eval cache data/corpus --out data/eval_cache && "
        f"streamchar eval train {name} --cache data/eval_cache`.\n"
    )


def _pick_word_penalty(recognizer, split: EvalSplit, candidates=(0.0, 0.5, 1.0, 2.0)) -> float:
    """The word penalty with the lowest WER on 40 training monologues (a development set: never the test split)."""
    from streamchar.eval.instruments.recognizer import evaluate_recognizer

    best, best_wer = 1.0, float("inf")
    for penalty in candidates:
        recognizer.word_penalty = penalty
        wer = evaluate_recognizer(recognizer, split, max_clips=40)["wer"]
        logger.info("word penalty %.1f: development WER %.3f", penalty, wer)
        if wer < best_wer:
            best, best_wer = penalty, wer
    return best


def train_instrument(name: str, cache: str | Path, root: str | Path = DEFAULT_ROOT, steps: int | None = None,
                     run_root: str | Path = "runs/eval") -> dict:  # fmt: skip
    """Train instrument ``name`` on the cache's train split, score it on the test split and save it."""
    if name not in INSTRUMENTS:
        raise ValueError(f"Unknown instrument '{name}'; use one of {', '.join(INSTRUMENTS)}.")
    train, test = load_eval_split(cache, "train"), load_eval_split(cache, "test")
    steps = steps or DEFAULT_STEPS.get(name, 0)
    folder, run_dir = Path(root) / name, Path(run_root) / name
    started = time.perf_counter()
    if name == "recognizer":
        from streamchar.eval.instruments.recognizer import (
            Lexicon,
            Recognizer,
            evaluate_recognizer,
            recognizer_vocabulary,
            save_recognizer,
            train_recognizer,
        )  # fmt: skip

        model = train_recognizer(train, steps, run_dir=run_dir)
        lexicon = Lexicon.build(recognizer_vocabulary([c["transcript"] for c in train.clips]))
        recognizer = Recognizer(model, lexicon)
        recognizer.word_penalty = _pick_word_penalty(recognizer, train)
        scores = evaluate_recognizer(recognizer, test)
        save_recognizer(
            recognizer, folder, scores, _card(name, scores, steps, time.perf_counter() - started, str(cache))
        )
    elif name == "sync":
        from streamchar.eval.instruments.sync_expert import (
            evaluate_sync_expert,
            save_sync_expert,
            train_sync_expert,
        )

        model = train_sync_expert(train, steps, run_dir=run_dir)
        scores = evaluate_sync_expert(model, test, shifts=(0, 3))
        save_sync_expert(
            model, folder, scores, _card(name, scores, steps, time.perf_counter() - started, str(cache))
        )
    elif name in ("identity", "speaker"):
        from streamchar.eval.instruments import encoders

        train_fn = encoders.train_identity_encoder if name == "identity" else encoders.train_speaker_encoder
        evaluate = (
            encoders.evaluate_identity_encoder if name == "identity" else encoders.evaluate_speaker_encoder
        )
        model = train_fn(train, steps, run_dir=run_dir)
        scores = evaluate(model, test)
        encoders.save_encoder(
            model, folder, scores, _card(name, scores, steps, time.perf_counter() - started, str(cache))
        )
    else:
        from streamchar.eval.instruments.base import save_instrument
        from streamchar.eval.instruments.mouth_probe import train_mouth_reader
        from streamchar.eval.metrics.statistics import pearson

        reader = train_mouth_reader(train.mouth, train.mouth_open, steps, run_dir=run_dir)
        scores = {"pearson_r": round(pearson(reader.predict(test.mouth), test.mouth_open.float().numpy()), 4)}
        save_instrument(
            reader, folder, {}, scores, _card(name, scores, steps, time.perf_counter() - started, str(cache))
        )
    shutil.rmtree(run_dir, ignore_errors=True)  # resumable until saved; a later `train` starts afresh
    logger.info("%s: %s (saved to %s)", name, scores, folder)
    return scores
