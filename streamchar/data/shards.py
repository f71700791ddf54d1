"""Clip shards: the on-disk format of every corpus, synthetic or prepared from real clips.

A corpus is a folder with ``corpus.json`` (the manifest) and shards ``shard-NNNNN.tar``. A shard
is a plain tar (fixed headers, so the same content gives the same bytes) holding, per clip:

- ``KEY.json``: metadata (transcript, word and phoneme timings, character, voice, turns, ...);
- ``KEY.mp4``: the frames, lossless RGB H.264 (``media.encode_video_bytes``);
- ``KEY.wav``: mono 16-bit PCM at the timeline's sample rate;
- ``KEY.gt.safetensors``: per-frame ground truth (synthetic clips only).

Each shard has a sidecar ``shard-NNNNN.json`` listing its clips, written after the shard, so a
shard with a sidecar is complete; an interrupted run leaves neither and is redone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamchar.media import decode_video_bytes, read_wav_bytes, wav_bytes

MANIFEST = "corpus.json"
FORMAT_VERSION = 1


class CorpusError(ValueError):
    """A corpus folder or shard that cannot be used; the message says what to do."""


def dumps_json(obj) -> str:
    """Deterministic JSON: sorted keys, no extra whitespace variation."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


@dataclass
class Clip:
    """One clip read back from a shard."""

    key: str
    meta: dict
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [N]
    sample_rate: int
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Collects clips and writes them as one shard, atomically, on :meth:`close`."""

    def __init__(self, folder: str | Path, index: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.path = self.folder / shard_name(index)
        self._members: list[tuple[str, bytes]] = []
        self._entries: list[dict] = []

    def add(
        self,
        key: str,
        meta: dict,
        video: bytes,
        audio: np.ndarray,
        sample_rate: int,
        ground_truth: dict[str, np.ndarray] | None = None,
        summary: dict | None = None,
    ) -> None:
        """Add one clip. ``summary`` goes into the sidecar index (split, character, duration...)."""
        from safetensors.numpy import save

        if "/" in key or key.startswith("."):
            raise CorpusError(f"Clip key {key!r} must not contain '/' or start with '.'.")
        self._members.append((f"{key}.json", dumps_json(meta).encode()))
        self._members.append((f"{key}.mp4", video))
        self._members.append((f"{key}.wav", wav_bytes(audio, sample_rate)))
        if ground_truth:
            arrays = {k: np.ascontiguousarray(v) for k, v in sorted(ground_truth.items())}
            self._members.append((f"{key}.gt.safetensors", save(arrays)))
        self._entries.append({"key": key, "shard": self.path.name, **(summary or {})})

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> list[dict]:
        """Write the tar and then its sidecar index; returns the index entries."""
        tmp = self.path.with_suffix(".tar.tmp")
        with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in self._members:
                tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        os.replace(tmp, self.path)
        sidecar = {"shard": self.path.name, "sha256": file_sha256(self.path), "clips": self._entries}
        write_json_atomic(self.path.with_suffix(".json"), sidecar)
        return self._entries


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_manifest(folder: Path, name: str, how: str) -> dict:
    """The JSON manifest ``folder/name``, or a :class:`CorpusError` that says ``how`` to make it."""
    path = folder / name
    if not path.is_file():
        raise CorpusError(f"{folder} has no {name}; {how}")
    return json.loads(path.read_text())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardReader:
    """Random access to the clips of one shard (indexes member offsets once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CorpusError(f"Shard {self.path} does not exist; re-run the command that writes the corpus.")
        self._offsets: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(self.path, mode="r:") as tar:
                for member in tar:
                    self._offsets[member.name] = (member.offset_data, member.size)
        except tarfile.TarError as err:
            raise CorpusError(
                f"Shard {self.path} is damaged ({err}); delete it and its .json and re-run."
            ) from err
        self.keys = sorted({name.split(".", 1)[0] for name in self._offsets})

    def _read(self, name: str) -> bytes:
        if name not in self._offsets:
            raise KeyError(f"{name} is not in {self.path}")
        offset, size = self._offsets[name]
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def meta(self, key: str) -> dict:
        return json.loads(self._read(f"{key}.json"))

    def frames(self, key: str) -> np.ndarray:
        return decode_video_bytes(self._read(f"{key}.mp4"))

    def audio(self, key: str) -> tuple[np.ndarray, int]:
        return read_wav_bytes(self._read(f"{key}.wav"))

    def ground_truth(self, key: str) -> dict[str, np.ndarray]:
        from safetensors.numpy import load

        name = f"{key}.gt.safetensors"
        return load(self._read(name)) if name in self._offsets else {}

    def clip(self, key: str, frames: bool = True) -> Clip:
        """One clip; ``frames=False`` skips decoding the video (``Clip.frames`` is then None)."""
        audio, rate = self.audio(key)
        return Clip(
            key, self.meta(key), self.frames(key) if frames else None, audio, rate, self.ground_truth(key)
        )

    def __iter__(self) -> Iterator[Clip]:
        for key in self.keys:
            yield self.clip(key)


class Corpus:
    """A corpus folder: its manifest, clip index and readers."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        how = "create a corpus with `streamchar data synth` or `streamchar data prepare` first."
        self.manifest = read_manifest(self.folder, MANIFEST, how)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CorpusError(
                f"{self.folder / MANIFEST} has format version {self.manifest.get('format_version')}, this "
                f"StreamChar reads {FORMAT_VERSION}; regenerate the corpus."
            )
        self.clips: list[dict] = self.manifest["clips"]
        self._readers: dict[str, ShardReader] = {}

    @property
    def timeline(self) -> dict:
        return self.manifest["timeline"]

    def reader(self, shard: str) -> ShardReader:
        if shard not in self._readers:
            self._readers[shard] = ShardReader(self.folder / shard)
        return self._readers[shard]

    def entries(self, split: str | None = None) -> list[dict]:
        return [c for c in self.clips if split is None or c.get("split") == split]

    def clip(self, entry: dict, frames: bool = True) -> Clip:
        return self.reader(entry["shard"]).clip(entry["key"], frames)

    def iter_clips(self, split: str | None = None) -> Iterator[Clip]:
        for entry in self.entries(split):
            yield self.clip(entry)


def collect_index(folder: Path) -> tuple[list[dict], list[dict]]:
    """Shard list and clip index from the sidecars of complete shards in ``folder``."""
    shards, clips = [], []
    for sidecar in sorted(folder.glob("shard-*.json")):
        data = json.loads(sidecar.read_text())
        if not (folder / data["shard"]).is_file():
            continue
        shards.append({"name": data["shard"], "sha256": data["sha256"], "clips": len(data["clips"])})
        clips.extend(data["clips"])
    return shards, clips
