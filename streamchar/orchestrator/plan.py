"""``streamchar plan``: what the orchestrator plans for a text, chunk by chunk, in readable frames."""

from __future__ import annotations

from collections.abc import Iterator

from streamchar.orchestrator.session import Orchestrator


def plan_text(
    orch: Orchestrator, text: str, word_by_word: bool = False, max_chunks: int = 200
) -> Iterator[dict]:
    """Push ``text`` (whole, or one word at a time) and yield each planned chunk until the orchestrator is done
    or ``max_chunks``: its frames (``PHONEME`` + F0 bucket when not 0, ``.`` = listening), the pointer after
    it, the frames held and whether it was the last."""
    from streamchar.data.phonemes import PHONEMES

    pieces = text.split(" ") if word_by_word else [text]
    for i, piece in enumerate(pieces):
        orch.push_text(piece + (" " if word_by_word else ""), final=i == len(pieces) - 1)
    size = orch.vocab.buckets.size
    for index in range(max_chunks):
        chunk = orch.next_chunk()
        frames = [
            "." if not s else f"{PHONEMES[u // size]}{'' if u % size == 0 else u % size}"
            for u, s in zip(chunk.units.tolist(), chunk.speaking.tolist(), strict=True)
        ]
        yield {"chunk": index, "frames": frames, "pointer": chunk.pointer.tolist()[-1],
               "held": int(chunk.held.sum()), "done": chunk.done}  # fmt: skip
        if chunk.done:
            break
