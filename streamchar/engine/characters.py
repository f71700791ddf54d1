"""Characters a session can play: a reference image, a reference voice and the orchestrator's voice prompt.

A character folder holds ``image.png`` (square RGB), ``voice.wav`` (a few seconds of the voice, mono) and
``prompt.json`` (turns of that voice in ``turns.jsonl`` form, the orchestrator's voice prompt; optional),
with ``character.json`` naming where they came from. The tiny preset ships a few, exported from the
synthetic corpus with ``streamchar data export-character``; a user's own image or voice replaces the
shipped one piece by piece (an uploaded voice has no transcript, so the shipped prompt still sets the
orchestrator's tempo and pitch).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamchar.media import MediaError, load_audio, read_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Character:
    name: str
    image: np.ndarray  # uint8 [H, W, 3], square
    voice: np.ndarray | None = None  # float32 [N] at the timeline's sample rate
    prompt_turns: list[dict] = field(default_factory=list)
    voice_name: str | None = None  # where the voice came from (a shipped name or a file)
    folder: Path | None = None  # the shipped folder it was loaded from

    def with_image(self, path: str | Path, size: int) -> Character:
        return replace(self, image=read_image(path, size), name=Path(path).stem)

    def with_voice(self, path: str | Path, sample_rate: int) -> Character:
        return replace(self, voice=load_audio(path, sample_rate), voice_name=str(path))


def characters_root(folder: str | Path) -> Path:
    from streamchar.config import resolve_asset_path

    return resolve_asset_path(folder)


def list_characters(folder: str | Path) -> list[str]:
    root = characters_root(folder)
    return sorted(p.name for p in root.iterdir() if (p / "image.png").is_file()) if root.is_dir() else []


def load_character(
    name_or_folder: str | Path, characters_dir: str | Path, size: int, sample_rate: int
) -> Character:
    """A shipped character by name, or a character folder."""
    folder = Path(name_or_folder)
    if not (folder / "image.png").is_file():
        folder = characters_root(characters_dir) / str(name_or_folder)
    if not (folder / "image.png").is_file():
        names = list_characters(characters_dir)
        raise MediaError(
            f"No character '{name_or_folder}' (looked for image.png in {folder}); use one of {names} or a folder "
            "holding image.png and voice.wav."
        )
    voice = load_audio(folder / "voice.wav", sample_rate) if (folder / "voice.wav").is_file() else None
    prompt = json.loads((folder / "prompt.json").read_text()) if (folder / "prompt.json").is_file() else []
    return Character(folder.name, read_image(folder / "image.png", size), voice, prompt, folder.name, folder)


def character_from_corpus(corpus, char_id: int, turn_rows: list[dict] | None = None, voice_seconds: float = 3.0,
                          prompt_turns: int = 2, name: str | None = None) -> tuple[Character, dict]:  # fmt: skip
    """A corpus character in memory: the first frame of its first monologue, the first ``voice_seconds`` of
    its speech, and its ``prompt_turns`` longest turns from ``turn_rows`` (rows of ``RUN/turns.jsonl``);
    returns ``(character, info)``."""
    from streamchar.data.shards import Corpus, CorpusError

    corpus_ = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    entries = [e for e in corpus_.entries() if e["char_id"] == char_id]
    if not entries:
        raise CorpusError(
            f"Character {char_id} has no clip in {corpus_.folder}; pick a char_id from corpus.json."
        )
    entries.sort(key=lambda e: (e.get("kind") != "monologue", e["key"]))
    clip = corpus_.clip(entries[0])
    spans = clip.meta.get("speaking_spans") or [[0.0, clip.meta["duration"]]]
    rate = clip.meta["sample_rate"]
    start = int(spans[0][0] * rate)
    voice = clip.audio[start : start + int(voice_seconds * rate)].astype(np.float32)
    rows = turn_rows or []
    own = [t for r in rows if r["char_id"] == char_id for t in r["turns"]]
    language = next((r.get("language") for r in rows if r["char_id"] == char_id), None)
    own.sort(key=lambda t: -len(t["units"]))
    name = name or f"char{char_id}"
    info = {"name": name, "corpus": str(corpus_.folder), "char_id": char_id, "clip": clip.meta["key"],
            "split": entries[0].get("split"), "voice_seconds": round(len(voice) / rate, 3), "sample_rate": rate,
            "prompt_turns": len(own[:prompt_turns]), "language": language,
            "espeak_voice": clip.meta.get("voice")}  # fmt: skip
    return Character(name, clip.frames[0], voice, own[:prompt_turns], name), info


def read_turn_rows(turns: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(turns).read_text().splitlines() if line.strip()]


def export_character(corpus: str | Path, turns: str | Path, char_id: int, out: str | Path,
                     voice_seconds: float = 3.0, prompt_turns: int = 2) -> dict:  # fmt: skip
    """Write a character folder from a corpus character (see :func:`character_from_corpus`; ``turns`` is
    ``RUN/turns.jsonl`` of ``streamchar train orchestrator``)."""
    from PIL import Image

    from streamchar.media import wav_bytes

    out = Path(out)
    character, info = character_from_corpus(
        corpus, char_id, read_turn_rows(turns), voice_seconds, prompt_turns, out.name
    )
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(character.image).save(out / "image.png", optimize=True)
    (out / "voice.wav").write_bytes(wav_bytes(character.voice, info.pop("sample_rate")))
    (out / "prompt.json").write_text(json.dumps(character.prompt_turns) + "\n")
    (out / "character.json").write_text(json.dumps(info, indent=1) + "\n")
    logger.info("character %s written to %s", out.name, out)
    return info
