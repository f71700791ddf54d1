"""How the frontend's phonemes compare with the corpus's own phoneme events, for three ways of asking
espeak-ng: each word with the word after it (what :class:`~streamchar.orchestrator.text.Frontend`
does), each word alone, and whole sentences. Phoneme error rate (edit distance / event phonemes) over
the first N speaking clips, side by side in one run.

    .venv/bin/python bench/frontend_phonemes.py --corpus data/corpus [--clips 300]
"""

from __future__ import annotations

import argparse

import numpy as np

from streamchar.data.phonemes import SILENCE_ID, phoneme_id
from streamchar.data.phonemizer import get_phonemizer
from streamchar.data.shards import Corpus
from streamchar.orchestrator.text import Frontend, WordStream


def edit_distance(a: list[int], b: list[int]) -> int:
    row = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        prev, row = row, row.copy()
        row[0] = i
        for j, y in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y))
    return int(row[-1])


def ids(mnemonics: list[str]) -> list[int]:
    return [i for i in (phoneme_id(p) for p in mnemonics) if i != SILENCE_ID]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="data/corpus")
    parser.add_argument("--clips", type=int, default=300)
    args = parser.parse_args()
    corpus, espeak = Corpus(args.corpus), get_phonemizer()
    frontends: dict[str, Frontend] = {}
    errors = {"word + next word (Frontend)": 0, "word alone": 0, "whole sentence": 0}
    total = clips = 0
    for entry in corpus.entries():
        if clips >= args.clips:
            break
        meta = corpus.reader(entry["shard"]).meta(entry["key"])
        if not meta.get("phonemes"):
            continue
        clips += 1
        language = meta["voice"]["language"]
        frontend = frontends.setdefault(language, Frontend(language))
        truth = ids([p for p, *_ in meta["phonemes"]])
        words = WordStream().push(meta["transcript"], final=True)
        ways = {
            "word + next word (Frontend)": [p for _, ph in frontend.sentence(meta["transcript"]) for p in ph],
            "word alone": [p for w in words for g in espeak.words(w.written, language) for p in ids(g)],
            "whole sentence": [
                p for g in espeak.words(" ".join(w.written for w in words), language) for p in ids(g)
            ],
        }
        for name, predicted in ways.items():
            errors[name] += edit_distance(predicted, truth)
        total += len(truth)
    print(f"{clips} clips, {total} event phonemes")
    for name, count in errors.items():
        print(f"  {name:28s} phoneme error {count / total:6.2%}")


if __name__ == "__main__":
    main()
