"""The WebSocket server: protocol, limits and robustness (FastAPI's TestClient, shipped tiny checkpoints)."""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from streamchar.config import load_config  # noqa: E402
from streamchar.engine.engine import Engine  # noqa: E402
from streamchar.serve.app import create_app  # noqa: E402
from streamchar.serve.protocol import decode_chunk  # noqa: E402


@pytest.fixture(scope="module")
def engine():  # the eager step: tests/test_fastpath.py checks the compiled one
    cfg = load_config("tiny", ["engine.steps=1", "engine.guidance_conditions=1.0", "engine.guidance_ref_image=1.0",
                               "engine.guidance_ref_voice=1.0", "engine.lookahead_chunks=1",
                               "engine.compile=off"])  # fmt: skip
    return Engine.from_config(cfg)


def client_for(engine, **serve):
    return TestClient(create_app(engine, serve_cfg=dataclasses.replace(engine.cfg.serve, **serve)))


def receive_until_chunk(ws, limit=20):
    """The next media message (skipping stats), as (header, audio, frames)."""
    for _ in range(limit):
        message = ws.receive()
        if message.get("bytes") is not None:
            return decode_chunk(message["bytes"])
        assert json.loads(message["text"])["type"] == "stats"
    raise AssertionError("no media message")


def start(ws, **extra):
    ws.send_text(json.dumps({"type": "start"} | extra))
    ready = ws.receive_json()
    assert ready["type"] == "ready", ready
    return ready


def wait_for(predicate, seconds=10.0):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_page_characters_and_a_spoken_sentence(engine):
    with client_for(engine) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<canvas" in page.text and "/ws" in page.text
        names = client.get("/characters").json()
        assert {"ada", "ben", "cleo"} <= set(names["characters"]) and names["default"] == "ada"
        assert client.get("/characters/ada/image.png").headers["content-type"] == "image/png"
        assert client.get("/characters/nobody/image.png").status_code == 404
        with client.websocket_connect("/ws") as ws:
            ready = start(ws, character="ben")
            assert ready["character"] == "ben" and ready["fps"] == 25 and ready["width"] == 128
            ws.send_text(json.dumps({"type": "text", "text": "Hello there, nice to see you.", "final": True}))
            headers = []
            for _ in range(8):
                header, audio, frames = receive_until_chunk(ws)
                assert len(frames) == header["frames"] == 12 and frames[0].shape == (128, 128, 3)
                assert audio.dtype == np.float32 and len(audio) == header["samples"] == 12 * 640
                headers.append(header)
            assert any(h["speaking"] for h in headers)
            assert [h["index"] for h in headers] == list(range(8))
            ws.send_text(json.dumps({"type": "stop"}))
            stats = ws.receive_json()
            assert stats["type"] == "stats" and stats["chunks"] >= 8


def test_malformed_oversized_and_wrong_messages_are_refused(engine):
    with client_for(engine, max_message_bytes=4000, max_text_chars=50) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("{not json")
            error = ws.receive_json()
            assert error["type"] == "error" and "not valid JSON" in error["message"] and not error["fatal"]
            ws.send_text(json.dumps({"type": "dance"}))
            assert "type" in ws.receive_json()["message"]
            ws.send_text(json.dumps({"type": "text", "text": "too early"}))
            assert "start" in ws.receive_json()["message"]
            ws.send_text("x" * 5000)
            assert "limit of 4,000 bytes" in ws.receive_json()["message"]
            ws.send_text(
                json.dumps({"type": "start", "image": base64.b64encode(b"not an image at all").decode()})
            )
            error = ws.receive_json()
            assert "as an image" in error["message"] and not error["fatal"]
            ws.send_text(json.dumps({"type": "start", "character": "nobody"}))
            assert "No character 'nobody'" in ws.receive_json()["message"]
            ws.send_text(
                json.dumps({"type": "start", "character": "../characters/ada"})
            )  # only shipped names
            assert "No character" in ws.receive_json()["message"]
            ws.send_text(json.dumps({"type": "start", "character": 5}))
            assert "'character' must be" in ws.receive_json()["message"]
            ws.send_text("[" * 3000)
            assert "nests too deeply" in ws.receive_json()["message"]
            import io

            import soundfile as sf

            wav = io.BytesIO()
            sf.write(wav, np.zeros(10, np.float32), 99_999_989, format="WAV", subtype="PCM_16")
            ws.send_text(json.dumps({"type": "start", "voice": base64.b64encode(wav.getvalue()).decode()}))
            assert "between 8 and 96 kHz" in ws.receive_json()["message"]
            start(ws)  # the socket still works
            ws.send_text(json.dumps({"type": "text", "text": "y" * 60}))
            assert "over the limit of 50" in ws.receive_json()["message"]
            ws.send_text(json.dumps({"type": "text", "text": "hi", "speaker": True}))
            assert "'speaker' must be 0 or 1" in ws.receive_json()["message"]
            ws.send_bytes(np.zeros(100, np.float32).tobytes())  # audio to a text session
            message = ws.receive()
            while message.get("text") is None or json.loads(message["text"])["type"] != "error":
                message = ws.receive()
            assert "push_audio" in json.loads(message["text"])["message"] or "speaks text" in message["text"]
            receive_until_chunk(ws)  # and the session still streams


def test_uploaded_image_and_wrong_size(engine):
    import io

    from PIL import Image

    def b64(image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    with client_for(engine) as client, client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "start", "image": b64(Image.new("RGB", (200, 100)))}))
        assert "crop it to a square" in ws.receive_json()["message"]
        ready = start(ws, image="data:image/png;base64," + b64(Image.new("RGB", (256, 256), (200, 120, 90))))
        assert ready["character"] == "upload"
        receive_until_chunk(ws)


def test_disconnect_mid_stream_releases_the_session(engine):
    baseline = engine.sessions
    with client_for(engine) as client:
        app = client.app
        with client.websocket_connect("/ws") as ws:
            start(ws)
            ws.send_text(
                json.dumps({"type": "text", "text": "I will be cut off halfway through.", "final": True})
            )
            receive_until_chunk(ws)
            assert len(app.state.sessions) == 1
        assert wait_for(lambda: not app.state.sessions and engine.sessions == baseline), (
            app.state.sessions,
            engine.sessions,
            baseline,
        )


def test_session_limit_refuses_extra_and_others_go_on(engine):
    with client_for(engine, max_sessions=2) as client:
        with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
            start(a)
            start(b)
            with client.websocket_connect("/ws") as c:
                c.send_text(json.dumps({"type": "start"}))
                refused = c.receive_json()
                assert refused["fatal"] and "limit of 2 sessions" in refused["message"]
            for ws in (a, b):
                receive_until_chunk(ws)
                receive_until_chunk(ws)


def test_four_concurrent_sessions_are_served(engine):
    with client_for(engine, max_sessions=4) as client:
        sockets = [client.websocket_connect("/ws") for _ in range(4)]
        opened = [s.__enter__() for s in sockets]
        try:
            for i, ws in enumerate(opened):
                start(ws, character=["ada", "ben", "cleo", "ada"][i])
                ws.send_text(json.dumps({"type": "text", "text": f"Session {i} says hello.", "final": True}))
            assert client.get("/health").json()["sessions"] == 4
            for _ in range(3):
                for ws in opened:
                    header, _, frames = receive_until_chunk(ws)
                    assert len(frames) == 12
        finally:
            for s in sockets:
                s.__exit__(None, None, None)
    # every session was closed, also those whose handlers the shutdown cancelled (their threads would
    # otherwise run on into the interpreter's exit)
    deadline = time.monotonic() + 10
    while engine.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.sessions == 0


def test_token(engine):
    with client_for(engine, token="s3cret") as client:
        assert client.get("/").status_code == 401
        assert client.get("/?token=s3cret").status_code == 200
        assert client.get("/characters", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with client.websocket_connect("/ws") as ws:
            refused = ws.receive_json()
            assert refused["fatal"] and "token" in refused["message"]
        with client.websocket_connect("/ws?token=s3cret") as ws:
            start(ws)


def test_stream_feeds_text_into_the_live_session(engine):
    from streamchar.serve.app import text_feed

    app = create_app(engine, feed=text_feed(["Streaming from the terminal, word by word."], word_seconds=0.0))
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        start(ws)
        assert any(receive_until_chunk(ws)[0]["speaking"] for _ in range(10))
