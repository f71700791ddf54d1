"""Unseen text: sentences the corpus generator never produced, spoken by a held-out character.

The model's speech is judged against espeak-ng's own speech of the same sentences in the same character's
corpus voice (what a TTS would say): the recognizer's phoneme error rate of each, against espeak's phonemes
of the text. The sentences are public-domain prose (Project Gutenberg texts and the opening of the Rainbow
Passage); words outside the recognizer's lexicon, and words the corpus never said, are counted, because the
recognizer cannot spell a word it does not know (its WER is reported but means little for those words).

    streamchar eval unseen --ckpt checkpoints/tiny/student-s2-2step --character cleo --out docs/results/unseen
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from streamchar.eval.reports.unseen import write_unseen_report

logger = logging.getLogger(__name__)

# public-domain text: the opening of the Rainbow Passage, and sentences from Project Gutenberg books
# (Austen, Melville, Carroll, Dickens, Doyle, Twain, Stevenson, Wells)
UNSEEN_SENTENCES = (
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "The rainbow is a division of white light into many beautiful colors.",
    "These take the shape of a long round arch, with its path high above, and its two ends apparently beyond the "
    "horizon.",
    "There is, according to legend, a boiling pot of gold at one end.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife.",
    "Some years ago, having little or no money in my purse, I thought I would sail about a little and see the "
    "watery part of the world.",
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    "It was the best of times, it was the worst of times.",
    "To Sherlock Holmes she is always the woman.",
    "You don't know about me without you have read a book by the name of The Adventures of Tom Sawyer.",
    "Squire Trelawney, Doctor Livesey, and the rest of these gentlemen having asked me to write down the whole "
    "particulars about Treasure Island.",
    "No one would have believed in the last years of the nineteenth century that this world was being watched "
    "keenly and closely.",
)


def _lexicon_words(recognizer) -> set[str]:
    return set(recognizer.lexicon.words) if recognizer.lexicon is not None else set()


def corpus_words(turns: str | Path | None) -> set[str]:
    """Every word the corpus said (from the orchestrator's turn table, ``RUN/turns.jsonl``)."""
    from streamchar.engine.characters import read_turn_rows
    from streamchar.eval.metrics.error_rates import normalise_words

    if turns is None or not Path(turns).is_file():
        return set()
    words = set()
    for row in read_turn_rows(turns):
        for turn in row["turns"]:
            words.update(normalise_words(" ".join(w for w, _ in turn["words"])))
    return words


def unseen_protocol(cfg, ckpt: str, character: str, instruments: str | Path, out: str | Path,
                    turns: str | Path | None = None, sentences: tuple[str, ...] = UNSEEN_SENTENCES,
                    steps: int | None = None) -> dict:  # fmt: skip
    """Speak ``sentences`` as ``character`` (a shipped character with its corpus voice) through the engine and
    by espeak-ng; write ``OUT/report.json`` and ``report.md``; returns the report."""
    from streamchar.data.espeak import Voice
    from streamchar.data.synth import espeak_speech
    from streamchar.eval.metrics.error_rates import normalise_words
    from streamchar.eval.protocols.measure import Instruments, measure_speech, summarise
    from streamchar.eval.protocols.speak import engine_for, parse_ckpt, speak

    spec = parse_ckpt(ckpt)
    engine = engine_for(cfg, spec.path, spec.switches)
    char = engine.character(character)
    record = Path(cfg.engine.characters_dir) / character / "character.json"
    voice_params = json.loads(record.read_text()).get("espeak_voice") if record.is_file() else None
    if not voice_params:
        raise ValueError(
            f"Character '{character}' has no espeak_voice in its character.json; export it again with "
            "`streamchar data export-character` so its corpus voice is known."
        )
    voice = Voice(**voice_params)
    inst = Instruments.load(instruments)
    known, said_before = _lexicon_words(inst.recognizer), corpus_words(turns)
    model_rows, espeak_rows, words = [], [], []
    for i, text in enumerate(sentences):
        generated, _ = speak(engine, char, [text], spec.steps or steps, seed=i)
        _, audio, _, _ = generated.arrays()
        model_rows.append(measure_speech(inst, audio, text, char.voice))
        wave, _ = espeak_speech(text, voice, engine.timeline.sample_rate)
        espeak_rows.append(measure_speech(inst, wave, text, char.voice))
        words += normalise_words(text)
    unique = sorted(set(words))
    result = {
        "protocol": "unseen", "model": spec.name, "character": character, "sentences": list(sentences),
        "words": len(words), "unique_words": len(unique),
        "out_of_lexicon": sorted(w for w in unique if w not in known),
        "never_in_corpus": sorted(w for w in unique if said_before and w not in said_before),
        "model_speech": summarise(model_rows) | {"transcripts": [r["transcript"] for r in model_rows]},
        "espeak_speech": summarise(espeak_rows) | {"transcripts": [r["transcript"] for r in espeak_rows]},
    }  # fmt: skip
    result["per_gap"] = round(result["model_speech"]["per"] - result["espeak_speech"]["per"], 4)
    write_unseen_report(result, out)
    return result
