"""Previews of a corpus (``streamchar data preview``): a contact sheet PNG and an mp4 with sound.

In the video, a monologue plays beside a caption panel that shows the transcript with the word
being spoken highlighted (from the word timings, so the panel is a visible check of timing
truth); a dialogue plays its two views side by side over the mixed audio of both speakers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from streamchar.data.shards import Clip, Corpus
from streamchar.media import Mp4Writer, fit_length

logger = logging.getLogger(__name__)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def choose_clips(corpus: Corpus, count: int) -> list[dict]:
    """Up to ``count`` entries covering styles and kinds: dialogues first (one view each), then
    monologues of every style, then the rest."""
    entries = corpus.entries()
    picked: list[dict] = []
    seen_dialogues: set[str] = set()
    for e in entries:
        if (
            e.get("kind") == "dialogue"
            and e.get("dialogue_id") not in seen_dialogues
            and len(picked) < max(1, count // 3)
        ):
            picked.append(e)
            seen_dialogues.add(e["dialogue_id"])
    styles_seen: set[str] = set()
    for e in entries:
        if e.get("kind") == "monologue" and e.get("style") not in styles_seen and len(picked) < count:
            picked.append(e)
            styles_seen.add(e.get("style"))
    for e in entries:
        if len(picked) >= count:
            break
        if e not in picked and e.get("kind") != "dialogue":
            picked.append(e)
    return picked[:count]


def contact_sheet(corpus: Corpus, entries: list[dict], columns: int = 6, scale: int = 1) -> Image.Image:
    """Rows of frames sampled evenly through each clip, each row labelled."""
    rows = []
    label_h = 14 * scale
    for entry in entries:
        reader = corpus.reader(entry["shard"])
        frames = reader.frames(entry["key"])
        meta = reader.meta(entry["key"])
        idx = np.linspace(0, len(frames) - 1, columns).round().astype(int)
        strip = np.concatenate([frames[i] for i in idx], axis=1)
        img = Image.fromarray(strip)
        if scale != 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        canvas = Image.new("RGB", (img.width, img.height + label_h), (20, 20, 24))
        canvas.paste(img, (0, label_h))
        text = f'{meta["key"]}  {meta["style"]}  {meta["kind"]}  {meta["split"]}  "{meta["transcript"][:60]}"'
        ImageDraw.Draw(canvas).text((3, 1), text, fill=(230, 230, 230), font=_font(11 * scale))
        rows.append(np.asarray(canvas))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return Image.fromarray(np.concatenate(rows, axis=0))


def _caption_panel(size: tuple[int, int], words: list[list], t: float, header: str) -> np.ndarray:
    """Transcript with the word spoken at time ``t`` highlighted."""
    w, h = size
    img = Image.new("RGB", (w, h), (24, 26, 32))
    d = ImageDraw.Draw(img)
    font = _font(max(10, h // 16))
    small = _font(max(9, h // 22))
    d.text((8, 6), header, fill=(150, 160, 180), font=small)
    x, y = 8, 8 + h // 10
    line_h = int(h / 12) + 2
    for word, start, end in words:
        label = f"{word} "
        width = d.textlength(label, font=font)
        if x + width > w - 8:
            x, y = 8, y + line_h
        colour = (255, 214, 90) if start <= t < end else ((235, 235, 240) if t >= end else (110, 115, 130))
        d.text((x, y), label, fill=colour, font=font)
        x += width
    return np.asarray(img)


def _upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def preview_video(corpus: Corpus, entries: list[dict], out: str | Path, scale: int = 2) -> Path:
    """An mp4 with sound: each chosen clip in turn (dialogues side by side), at ``scale`` x size."""
    out = Path(out)
    fps = corpus.timeline["fps"]
    rate = corpus.timeline["sample_rate"]
    writer = Mp4Writer(out, fps, rate)
    try:
        for entry in entries:
            clip = corpus.clip(entry)
            if clip.meta["kind"] == "dialogue":
                other = _dialogue_partner(corpus, entry)
                left, right = (clip, other) if clip.key.endswith("-0") else (other, clip)
                n = min(len(left.frames), len(right.frames))
                frames = np.concatenate(
                    [_upscale(left.frames[:n], scale), _upscale(right.frames[:n], scale)], axis=2
                )
                audio = fit_length(left.audio, n * rate // fps) + fit_length(right.audio, n * rate // fps)
            else:
                n = len(clip.frames)
                video = _upscale(clip.frames, scale)
                size = (video.shape[2], video.shape[1])
                header = (
                    f"{clip.meta['style']} | {clip.meta['voice']['language']}+{clip.meta['voice']['variant']}"
                )
                panels = np.stack(
                    [_caption_panel(size, clip.meta["words"], (k + 0.5) / fps, header) for k in range(n)]
                )
                frames = np.concatenate([video, panels], axis=2)
                audio = fit_length(clip.audio, n * rate // fps)
            writer.write_frames(frames)
            writer.write_audio(np.clip(audio, -1, 1))
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _dialogue_partner(corpus: Corpus, entry: dict) -> Clip:
    for other in corpus.entries():
        if other.get("dialogue_id") == entry.get("dialogue_id") and other["key"] != entry["key"]:
            return corpus.clip(other)
    raise ValueError(
        f"Dialogue {entry.get('dialogue_id')} has only one view in this corpus; re-run data synth."
    )


def write_preview(corpus_dir: str | Path, out_dir: str | Path, clips: int = 6) -> dict:
    """Contact sheet and preview video of ``clips`` clips of the corpus in ``corpus_dir``."""
    corpus = Corpus(corpus_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = choose_clips(corpus, clips)
    if not entries:
        raise ValueError(f"The corpus in {corpus_dir} has no clips to preview.")
    sheet = contact_sheet(corpus, entries)
    sheet_path = out_dir / "contact_sheet.png"
    sheet.save(sheet_path)
    video_path = preview_video(corpus, entries, out_dir / "preview.mp4")
    return {"contact_sheet": str(sheet_path), "video": str(video_path), "clips": [e["key"] for e in entries]}


def probe_streams(path: str | Path) -> list[dict]:
    """Codec, duration and rate of each stream of a media file, read back with PyAV."""
    import av

    streams = []
    with av.open(str(path)) as container:
        for s in container.streams:
            duration = float(s.duration * s.time_base) if s.duration is not None else None
            info = {"type": s.type, "codec": s.codec_context.name, "duration": duration}
            if s.type == "audio":
                info["sample_rate"] = s.rate
            if s.type == "video":
                info["width"], info["height"] = s.width, s.height
                info["frames"] = s.frames
            streams.append(info)
    return streams
