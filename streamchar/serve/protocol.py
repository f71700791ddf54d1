"""The WebSocket protocol between ``streamchar serve`` and its clients (documented in docs/architecture.md).

Control messages are JSON text; media travels as binary messages.

Client -> server, text: ``start`` (once, first), ``text``, ``interrupt``, ``audio_end``, ``stop``.
Client -> server, binary: microphone PCM for an audio-driven session, float32 little-endian mono at the
``sample_rate`` the ``ready`` message announced.

Server -> client, text: ``ready``, ``chunk`` (timing of the binary message that follows), ``stats``,
``error`` (``fatal`` says whether the socket closes). Server -> client, binary, one per chunk::

    b"SCH1" | uint32 header length | header (JSON) | audio float32[samples] | for each frame: uint32 n | JPEG[n]

Every integer is little-endian. The header repeats ``index``, ``media_start``, ``frames``, ``samples``,
``width``, ``height``, ``speaking``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"SCH1"
CLIENT_TYPES = ("start", "text", "interrupt", "audio_end", "stop")


class ProtocolError(ValueError):
    """A client message the server refuses; the message says what to send instead."""


@dataclass(frozen=True)
class Limits:
    max_text_chars: int
    max_message_bytes: int
    max_image_bytes: int


def parse_control(raw: str, limits: Limits) -> dict:
    """A client's JSON control message, checked."""
    if len(raw.encode("utf-8", "surrogatepass")) > limits.max_message_bytes:
        raise ProtocolError(
            f"The message is over the server's limit of {limits.max_message_bytes:,} bytes; send less at once."
        )
    try:
        message = json.loads(raw)
    except RecursionError as err:
        raise ProtocolError("The message nests too deeply; send a flat JSON object.") from err
    except json.JSONDecodeError as err:
        raise ProtocolError(
            f"The message is not valid JSON ({err.msg} at character {err.pos}); send a JSON object."
        ) from err
    if not isinstance(message, dict) or message.get("type") not in CLIENT_TYPES:
        raise ProtocolError(f"Messages are JSON objects whose 'type' is one of {', '.join(CLIENT_TYPES)}.")
    kind = message["type"]
    if kind == "text":
        text = message.get("text")
        if not isinstance(text, str):
            raise ProtocolError("A text message needs a string 'text' (and optionally 'final': true).")
        if len(text) > limits.max_text_chars:
            raise ProtocolError(
                f"The text has {len(text):,} characters, over the limit of {limits.max_text_chars:,} per message; "
                "send it in pieces."
            )
        if not isinstance(message.get("final", False), bool):
            raise ProtocolError("'final' must be true or false.")
        speaker = message.get("speaker", 0)
        if type(speaker) is not int or speaker not in (0, 1):
            raise ProtocolError("'speaker' must be 0 or 1.")
    if kind == "start":
        if message.get("mode", "text") not in ("text", "audio"):
            raise ProtocolError(
                "'mode' must be text (text -> speech + video) or audio (microphone -> video)."
            )
        steps = message.get("steps")
        if steps is not None and (type(steps) is not int or not 1 <= steps <= 64):
            raise ProtocolError("'steps' must be a whole number from 1 to 64.")
        if message.get("character") is not None and not isinstance(message["character"], str):
            raise ProtocolError(
                "'character' must be the name of a shipped character (GET /characters lists them)."
            )
        for key in ("image", "voice"):
            if message.get(key) is not None:
                message[key] = decode_upload(message[key], key, limits.max_image_bytes)
    return message


def decode_upload(data, what: str, max_bytes: int) -> bytes:
    """A base64 upload (a data URL prefix is allowed)."""
    if not isinstance(data, str):
        raise ProtocolError(f"'{what}' must be a base64 string (a data URL works too).")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    if len(data) * 3 // 4 > max_bytes:
        raise ProtocolError(f"The {what} is over the limit of {max_bytes:,} bytes; send a smaller file.")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ProtocolError(f"The {what} is not valid base64; encode the file's bytes with base64.") from err


def parse_pcm(data: bytes, limits: Limits) -> np.ndarray:
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(
            f"The audio message is over the limit of {limits.max_message_bytes:,} bytes; send shorter blocks."
        )
    if len(data) % 4:
        raise ProtocolError(
            "Audio messages are float32 little-endian samples; the byte count must divide by 4."
        )
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_chunk(chunk, quality: int = 90) -> bytes:
    """One chunk as the binary media message."""
    frames, audio = chunk.frames, np.ascontiguousarray(chunk.audio, dtype="<f4")
    jpegs = [encode_jpeg(f, quality) for f in frames]
    header = json.dumps({
        "index": chunk.index, "media_start": round(chunk.timing.media_start, 6), "frames": len(frames),
        "samples": len(audio), "width": int(frames.shape[2]), "height": int(frames.shape[1]),
        "speaking": bool(chunk.speaking.any()), "duration": chunk.timing.duration,
    }).encode()  # fmt: skip
    parts = [MAGIC, struct.pack("<I", len(header)), header, audio.tobytes()]
    for jpeg in jpegs:
        parts += [struct.pack("<I", len(jpeg)), jpeg]
    return b"".join(parts)


def decode_chunk(data: bytes) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """The inverse of :func:`encode_chunk` (tests and Python clients): header, audio, RGB frames."""
    from PIL import Image

    if data[:4] != MAGIC:
        raise ProtocolError("Not a StreamChar media message.")
    (n,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8 : 8 + n])
    offset = 8 + n
    audio = np.frombuffer(data, dtype="<f4", count=header["samples"], offset=offset)
    offset += 4 * header["samples"]
    frames = []
    for _ in range(header["frames"]):
        (size,) = struct.unpack_from("<I", data, offset)
        frames.append(np.asarray(Image.open(io.BytesIO(data[offset + 4 : offset + 4 + size])).convert("RGB")))
        offset += 4 + size
    return header, audio, frames
