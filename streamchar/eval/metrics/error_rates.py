"""Error rates of transcripts: edit distance, the WER text normalisation, and corpus-level rates.

Text normalisation for WER (:func:`normalise_words`): lower case; every character other than a-z,
apostrophe and space becomes a space; runs of spaces split words. The corpus text is already written
out for speech (no digits or abbreviations), so nothing else is needed.
"""

from __future__ import annotations

import re


def edit_distance(reference: list, hypothesis: list) -> int:
    """Levenshtein distance (unit substitution, insertion and deletion costs)."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def normalise_words(text: str) -> list[str]:
    """The WER normalisation: lower case, keep a-z and apostrophes, split on everything else."""
    return re.sub(r"[^a-z' ]+", " ", text.lower()).replace(" '", " ").split()


def error_rate(pairs: list[tuple[list, list]]) -> float:
    """Corpus-level error rate: total edits over total reference tokens."""
    edits = sum(edit_distance(r, h) for r, h in pairs)
    return edits / max(1, sum(len(r) for r, _ in pairs))
