"""``streamchar plan``: what the orchestrator plans for a text, chunk by chunk, in readable frames."""

from __future__ import annotations

from collections.abc import Iterator

from streamchar.config import StreamCharConfig


def plan_text(cfg: StreamCharConfig, text: str, checkpoint: str | None = None, word_by_word: bool = False,
              max_chunks: int = 200) -> Iterator[dict]:  # fmt: skip
    """Push ``text`` (whole, or one word at a time) and yield each planned chunk until the orchestrator is done
    or ``max_chunks``: its frames (``PHONEME`` + F0 bucket when not 0, ``.`` = listening), the pointer after
    it, the frames held and whether it was the last."""
    from streamchar.data.phonemes import PHONEMES
    from streamchar.orchestrator.session import Orchestrator

    orch = Orchestrator.from_config(cfg, path=checkpoint)
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
