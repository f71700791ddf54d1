"""Training the evaluation instruments, and the proofs each must pass on ground truth before it judges a model.

``streamchar eval train NAME`` trains one instrument on the evaluation cache's training split and saves it to
``checkpoints/eval/NAME`` with a model card; ``streamchar eval prove`` measures every instrument on held-out
ground truth and writes ``OUT.json``, ``OUT.md`` and plots.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from streamchar.eval.features import EvalSplit, load_eval_split

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
    from streamchar.eval.recognizer import evaluate_recognizer

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
        from streamchar.eval.recognizer import (
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
        from streamchar.eval.sync_expert import evaluate_sync_expert, save_sync_expert, train_sync_expert

        model = train_sync_expert(train, steps, run_dir=run_dir)
        scores = evaluate_sync_expert(model, test, shifts=(0, 3))
        save_sync_expert(
            model, folder, scores, _card(name, scores, steps, time.perf_counter() - started, str(cache))
        )
    elif name in ("identity", "speaker"):
        from streamchar.eval import encoders

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
        from streamchar.eval.instrument import save_instrument
        from streamchar.eval.mouth_probe import pearson, train_mouth_reader

        reader = train_mouth_reader(train.mouth, train.mouth_open, steps, run_dir=run_dir)
        scores = {"pearson_r": round(pearson(reader.predict(test.mouth), test.mouth_open.float().numpy()), 4)}
        save_instrument(
            reader, folder, {}, scores, _card(name, scores, steps, time.perf_counter() - started, str(cache))
        )
    shutil.rmtree(run_dir, ignore_errors=True)  # resumable until saved; a later `train` starts afresh
    logger.info("%s: %s (saved to %s)", name, scores, folder)
    return scores


# -- proofs ----------------------------------------------------------------------------------------
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
    from streamchar.eval.encoders import frechet_distance

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
    from streamchar.eval.features import SAMPLE_RATE
    from streamchar.media import resample

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
    from streamchar.eval.recognizer import error_rate, evaluate_recognizer, normalise_words

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
    from streamchar.eval.encoders import (
        evaluate_identity_encoder,
        evaluate_speaker_encoder,
        load_identity_encoder,
        load_speaker_encoder,
    )  # fmt: skip
    from streamchar.eval.mouth_probe import load_mouth_reader, pearson
    from streamchar.eval.recognizer import load_recognizer
    from streamchar.eval.sync_expert import evaluate_sync_expert, load_sync_expert

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


def write_proof_report(result: dict, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    rec = result["recognizer"]
    sync = {int(k): v for k, v in result["sync"]["per_shift"].items()}
    lines = [
        "# Evaluation instruments on held-out ground truth",
        "",
        "Each instrument proves itself here before it judges a model (`streamchar eval prove`).",
        "",
        "## Transcript fidelity (CTC recognizer)",
        "",
        "| audio | PER | WER |",
        "|---|---|---|",
        f"| held-out identities, ground-truth corpus audio ({rec['heldout_identities']['clips']} monologues) | "
        f"{rec['heldout_identities']['per']:.1%} | {rec['heldout_identities']['wer']:.1%} |",
        f"| held-out sentences by voices not in the corpus ({rec['heldout_voices_and_sentences']['utterances']}) | "
        f"{rec['heldout_voices_and_sentences']['per']:.1%} | {rec['heldout_voices_and_sentences']['wer']:.1%} |",
        "",
        f"Out-of-vocabulary rate of the held-out transcripts: {rec['test_oov_rate']:.1%} (every OOV word is a word error).",
        "",
        "## Lip sync (sync expert), audio shifted by k frames",
        "",
        "Sync-C and Sync-D are taken at the best offset, so they do not move when the audio is only shifted; "
        "the confidence at the nominal alignment (Sync-C at offset 0) is what falls.",
        "",
        "| shift k | offset found = k | within ±1 | Sync-C | Sync-D | Sync-C at offset 0 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {k:+d} | {v['accuracy']:.1%} | {v['within_1']:.1%} | {v['sync_c']:.3f} | {v['sync_d']:.3f} | "
            f"{v['sync_c0']:.3f} |"
            for k, v in sorted(sync.items())
        ),  # fmt: skip
        "",
        "## Identity and voice (ROC AUC, same vs different, held-out identities)",
        "",
        f"- identity encoder: **{result['identity']['roc_auc']:.4f}** ({result['identity']['identities']} identities, "
        f"{result['identity']['faces']} frames, pairs from different clips)",
        f"- speaker encoder: **{result['speaker']['roc_auc']:.4f}** ({result['speaker']['voices']} voices, "
        f"{result['speaker']['utterances']} utterances)",
        "",
        "## Fréchet distance (identity-encoder features)",
        "",
        f"- two halves of the held-out ground truth (alternate clips, {result['frechet']['frames_per_half']} frames): "
        f"**{result['frechet']['halves']}**; below, the second half degraded against the first",
        "- blur sigma (px at 64 px): " + ", ".join(f"{k}: {v}" for k, v in result["frechet"]["blur"].items()),
        "- Gaussian noise sigma (of 255): "
        + ", ".join(f"{k}: {v}" for k, v in result["frechet"]["noise"].items()),
        f"- rises monotonically from the halves' value in both: **{result['frechet']['monotone']}**",
        "",
        "## Mouth-opening probe",
        "",
        f"Pearson r with the true mouth opening on held-out frames: **{result['mouth_probe']['pearson_r']}**",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    shifts = sorted(sync)
    axes[0].plot(shifts, [sync[k]["accuracy"] for k in shifts], "o-", label="exact")
    axes[0].plot(shifts, [sync[k]["within_1"] for k in shifts], "s--", label="within ±1")
    axes[0].set(
        xlabel="audio shift (frames)", ylabel="offset recovered", title="sync expert: offset recovery"
    )
    axes[0].set_ylim(0, 1.05)
    axes[0].legend()
    axes[1].plot(shifts, [sync[k]["sync_c"] for k in shifts], "o-", label="Sync-C (at the best offset)")
    axes[1].plot(shifts, [sync[k]["sync_c0"] for k in shifts], "s-", label="Sync-C at offset 0")
    axes[1].set(xlabel="audio shift (frames)", ylabel="confidence", title="sync confidence vs shift")
    axes[1].legend(fontsize=7)
    fr = result["frechet"]
    axes[2].plot([float(k) for k in fr["blur"]], list(fr["blur"].values()), "o-", label="blur sigma (px)")
    axes[2].plot(
        [float(k) / 16 for k in fr["noise"]], list(fr["noise"].values()), "s-", label="noise sigma / 16"
    )
    axes[2].axhline(fr["halves"], color="gray", ls=":", label="GT half vs half")
    axes[2].set(
        xlabel="strength", ylabel="Fréchet distance", title="Fréchet distance vs degradation", yscale="log"
    )
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out.parent / f"{out.name}.png", dpi=110)
    plt.close(fig)
