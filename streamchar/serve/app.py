"""``streamchar serve``: a FastAPI app with one WebSocket per live session and a page that plays it.

Routes: ``/`` (the page), ``/characters`` (shipped characters), ``/characters/{name}/image.png``,
``/health``, and the WebSocket ``/ws`` (protocol in :mod:`streamchar.serve.protocol` and docs/architecture.md).
The app holds no model math: it turns messages into :class:`~streamchar.engine.session.StreamSession`
calls and chunks into media messages. Every refusal is a one-sentence ``error`` message.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from streamchar.engine.characters import list_characters
from streamchar.engine.chunk import SessionClosed
from streamchar.engine.engine import Engine
from streamchar.engine.session import StreamSession
from streamchar.media import MediaError, read_image, read_wav_bytes, resample
from streamchar.serve.protocol import Limits, ProtocolError, encode_chunk, parse_control, parse_pcm

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
STATS_EVERY = 4  # chunks between stats messages


class _Refused(Exception):
    def __init__(self, message: str, fatal: bool = False, code: int = 1008) -> None:
        super().__init__(message)
        self.fatal, self.code = fatal, code


def create_app(engine: Engine, feed: Callable[[StreamSession], None] | None = None, serve_cfg=None):
    """The app for ``engine`` (limits from ``serve_cfg``, default ``engine.cfg.serve``). ``feed``
    (``streamchar stream``) is called in a thread with every new session and pushes text into it."""
    scfg = serve_cfg or engine.cfg.serve
    limits = Limits(scfg.max_text_chars, scfg.max_message_bytes, scfg.max_image_bytes)
    app = FastAPI(title="StreamChar", docs_url=None, redoc_url=None)
    app.state.sessions = set()
    slots = threading.Lock()

    def authorised(headers, query) -> bool:
        if not scfg.token:
            return True
        given = query.get("token") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        return hmac.compare_digest(given.encode(), scfg.token.encode())

    def check(request: Request) -> None:
        if not authorised(request.headers, request.query_params):
            raise HTTPException(
                401, "This server needs a token: add ?token=... or an Authorization: Bearer header."
            )

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request):
        check(request)
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/characters")
    async def characters(request: Request):
        check(request)
        return JSONResponse({"characters": list_characters(engine.cfg.engine.characters_dir),
                             "default": engine.cfg.engine.character})  # fmt: skip

    @app.get("/characters/{name}/image.png")
    async def character_image(name: str, request: Request):
        check(request)
        if name not in list_characters(engine.cfg.engine.characters_dir):
            raise HTTPException(404, f"No character '{name}'.")
        return FileResponse(engine.character(name).folder / "image.png", media_type="image/png")

    @app.get("/health")
    async def health():
        return {"sessions": len(app.state.sessions), "max_sessions": scfg.max_sessions}

    @app.websocket("/ws")
    async def websocket(ws: WebSocket):
        await ws.accept()
        if not authorised(ws.headers, ws.query_params):
            await _send_error(ws, "This server needs a token: connect to /ws?token=....", fatal=True)
            await ws.close(1008)
            return
        session: StreamSession | None = None
        sender: asyncio.Task | None = None
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("text") is not None:
                        control = parse_control(message["text"], limits)
                        if control["type"] == "start":
                            if session is not None:
                                raise _Refused(
                                    "This socket already has a session; open another socket for another."
                                )
                            session = await _start(control)
                            sender = asyncio.create_task(_send_chunks(ws, session))
                            await ws.send_text(json.dumps(_ready(session)))
                            if feed is not None:
                                threading.Thread(target=feed, args=(session,), daemon=True).start()
                            continue
                        if session is None:
                            raise _Refused("Send a 'start' message first.")
                        if control["type"] == "stop":
                            await ws.send_text(json.dumps({"type": "stats"} | session.stats.summary()))
                            break
                        await asyncio.to_thread(_control, session, control)
                    elif message.get("bytes") is not None:
                        if session is None:
                            raise _Refused("Send a 'start' message before audio.")
                        await asyncio.to_thread(session.push_audio, parse_pcm(message["bytes"], limits))
                except (ProtocolError, MediaError, ValueError) as err:
                    await _send_error(ws, str(err))
                except _Refused as err:
                    await _send_error(ws, str(err), fatal=err.fatal)
                    if err.fatal:
                        await ws.close(err.code)
                        break
                except (WebSocketDisconnect, asyncio.CancelledError):
                    raise
                except Exception as err:  # anything else: say so and close, never a silent drop
                    logger.exception("message handling failed")
                    await _send_error(ws, f"The server could not handle that message ({type(err).__name__}); "
                                          "the session is closed.", fatal=True)  # fmt: skip
                    await ws.close(1011)
                    break
                if sender is not None and sender.done():
                    break
        except WebSocketDisconnect:
            pass
        finally:
            if sender is not None:
                sender.cancel()
            if session is not None:
                try:
                    await asyncio.shield(asyncio.to_thread(session.close))
                except asyncio.CancelledError:  # the server is shutting down: close here, never leave the
                    session.close()  # session's threads running into the interpreter's exit
                    raise
                finally:
                    app.state.sessions.discard(session)
            logger.info("session ended (%d open)", len(app.state.sessions))

    async def _start(control: dict) -> StreamSession:
        def build() -> StreamSession:
            name = control.get("character")
            if name is not None and name not in list_characters(engine.cfg.engine.characters_dir):
                raise MediaError(f"No character '{name[:40]}'; pick one that GET /characters lists.")
            character = engine.character(name)
            if control.get("image") is not None:
                image = read_image(control["image"], engine.video_codec.image_size, scfg.max_image_pixels)
                character = replace(character, name="upload", image=image)
            if control.get("voice") is not None:
                samples, rate = _read_wav(control["voice"])
                if not 8000 <= rate <= 96000:
                    raise MediaError(f"The uploaded voice is at {rate} Hz; send a WAV between 8 and 96 kHz.")
                seconds = engine.timeline.reference_voice_seconds
                voice = resample(samples[: int(seconds * rate)], rate, engine.timeline.sample_rate)
                character = replace(character, voice=voice, voice_name="upload")
            with slots:
                if len(app.state.sessions) >= scfg.max_sessions:
                    raise _Refused(f"The server is serving its limit of {scfg.max_sessions} sessions; try again later.",
                                   fatal=True, code=1013)  # fmt: skip
                session = engine.session([character], mode=control.get("mode", "text"), steps=control.get("steps"),
                                         realtime=True)  # fmt: skip
                app.state.sessions.add(session)
            return session

        return await asyncio.to_thread(build)

    async def _send_chunks(ws: WebSocket, session: StreamSession) -> None:
        try:
            while True:
                chunk = await asyncio.to_thread(session.next_chunk)
                if chunk is None:
                    break
                if chunk.timing.media_start >= scfg.max_session_seconds:
                    await _send_error(ws, f"The session reached its limit of {scfg.max_session_seconds:g} s; "
                                          "start a new one.", fatal=True)  # fmt: skip
                    await ws.close(1000)
                    break
                await ws.send_bytes(await asyncio.to_thread(encode_chunk, chunk))
                if chunk.index % STATS_EVERY == STATS_EVERY - 1:
                    await ws.send_text(json.dumps({"type": "stats"} | session.stats.summary()))
        except SessionClosed:
            pass
        except Exception as err:  # the session failed: tell the client, then close
            logger.exception("session failed")
            try:
                await _send_error(
                    ws, f"The session failed ({type(err).__name__}: {err}); start a new one.", fatal=True
                )
                await ws.close(1011)
            except Exception:
                pass

    return app


def _control(session: StreamSession, control: dict) -> None:
    kind = control["type"]
    if kind == "text":
        session.push_text(
            control["text"], final=control.get("final", False), speaker=control.get("speaker", 0)
        )
    elif kind == "interrupt":
        session.interrupt()
    elif kind == "audio_end":
        session.push_audio([], final=True)


def _read_wav(data: bytes):
    try:
        return read_wav_bytes(data)
    except Exception as err:
        raise MediaError(
            f"Could not read the uploaded voice as a WAV file ({type(err).__name__}); send a WAV."
        ) from err


def _ready(session: StreamSession) -> dict:
    tl, character = session.tl, session.characters[0]
    return {"type": "ready", "fps": tl.fps, "sample_rate": tl.sample_rate, "chunk_seconds": tl.chunk_seconds,
            "width": int(character.image.shape[1]) * len(session.characters), "height": int(character.image.shape[0]),
            "character": character.name, "voice": character.voice_name, "mode": session.mode,
            "steps": session.sampler.steps}  # fmt: skip


async def _send_error(ws, message: str, fatal: bool = False) -> None:
    await ws.send_text(json.dumps({"type": "error", "message": message, "fatal": fatal}))


def text_feed(lines: Iterable[str], word_seconds: float = 0.0) -> Callable[[StreamSession], None]:
    """``streamchar stream``: push every line into the session as a turn, word by word."""
    import time

    def run(session: StreamSession) -> None:
        try:
            for line in lines:
                words = line.split()
                for i, word in enumerate(words):
                    session.push_text(word + " ", final=i == len(words) - 1)
                    time.sleep(word_seconds)
        except SessionClosed:
            pass
        except ValueError as err:
            logger.error("%s", err)

    return run
