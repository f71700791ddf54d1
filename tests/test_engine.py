"""The streaming engine with the shipped tiny checkpoints: chunks, accounting, interrupt, modes, memory."""

from __future__ import annotations

import gc
import json
import subprocess
import weakref

import numpy as np
import pytest
import torch

from streamchar.config import load_config
from streamchar.engine.chunk import SessionClosed
from streamchar.engine.clock import PlaybackClock
from streamchar.engine.engine import Engine
from streamchar.engine.render import Mp4Sink, parse_dialogue, render_text
from streamchar.orchestrator.text import TextError


@pytest.fixture(scope="module")
def engine():  # the eager step: tests/test_fastpath.py checks the compiled one
    cfg = load_config("tiny", ["engine.steps=1", "engine.guidance_conditions=1.0", "engine.guidance_ref_image=1.0",
                               "engine.guidance_ref_voice=1.0", "engine.tail_seconds=0.5",
                               "engine.compile=off"])  # fmt: skip
    return Engine.from_config(cfg)


def _run(session, limit=60):
    chunks = []
    for chunk in session:
        chunks.append(chunk)
        assert len(chunks) < limit, "the session did not end"
    return chunks


def test_text_session_shapes_timing_and_end(engine):
    tl = engine.timeline
    with engine.session() as session:
        session.push_text("Hello there, ", final=False)
        session.push_text("how are you today?", final=True)
        chunks = _run(session)
        stats = session.stats.summary()
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.frames.dtype == np.uint8 and c.frames.shape == (tl.chunk_video_frames(c.index), 128, 128, 3)
        assert c.audio.dtype == np.float32 and len(c.audio) == tl.video_frames_to_samples(len(c.frames))
        assert c.timing.ready >= c.timing.denoised >= c.timing.started
    assert any(not c.listening for c in chunks) and chunks[-1].listening
    # the session ends once the speech and the tail are covered, not later
    assert session.speech_end is not None
    covered = len(chunks) * tl.chunk_seconds
    assert session.speech_end + 0.5 <= covered < session.speech_end + 0.5 + tl.chunk_seconds + 1e-6
    assert stats["chunks"] == len(chunks) and stats["time_to_first_frame_s"] > 0
    assert stats["text_to_speech_latency_s"]["count"] == 2 and stats["real_time_factor"] > 0


def test_overlap_on_and_off_give_the_same_chunks(engine):
    outputs = []
    for overlap in (True, False):
        with engine.session(decode_overlap=overlap, seed=3) as session:
            session.push_text("One two three.", final=True)
            outputs.append(_run(session))
    assert len(outputs[0]) == len(outputs[1])
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.audio, b.audio)


def test_a_sessions_loop_and_decode_worker_share_the_cores_and_leave_the_callers_threads(engine):
    """engine.worker_threads (auto): with decode overlap on a CPU the chunk loop and the decode worker run
    side by side with half the builder's intra-op threads each; the caller's thread keeps its own."""
    caller, seen = torch.get_num_threads(), {}
    with engine.session(seed=0) as session:
        decode, denoise = session._chunk_decoder.decode, session._denoise_next

        def decode_seen(*args):
            seen["decode"] = torch.get_num_threads()
            return decode(*args)

        def denoise_seen():
            seen["loop"] = torch.get_num_threads()
            return denoise()

        session._chunk_decoder.decode, session._denoise_next = decode_seen, denoise_seen
        session.push_text("Hi.", final=True)
        assert list(session)
    half = max(1, engine.threads // 2)
    assert engine.worker_threads(True) == half and engine.worker_threads(False) == engine.threads
    assert seen == {"decode": half, "loop": half} and torch.get_num_threads() == caller


def test_interrupt_mid_sentence_then_speak_again(engine):
    session = engine.session(realtime=True, lookahead_chunks=0)
    try:
        session.push_text(
            "This is a rather long sentence that will be cut off before it ends, surely.", final=True
        )
        first = session.next_chunk()
        while first.listening:
            first = session.next_chunk()
        session.interrupt()
        # at most one chunk planned before the interrupt may still arrive; the one after is listening
        after = [session.next_chunk() for _ in range(2)]
        assert after[-1].listening
        assert not after[-1].conditions.speaking.any()
        session.push_text("Now I speak again.", final=True)
        again = [session.next_chunk() for _ in range(6)]
        assert any(not c.listening for c in again)
        assert session.stats.interrupts == 1
    finally:
        session.close()


def test_audio_mode_plays_the_given_speech(engine):
    tl = engine.timeline
    speech = engine.character().voice
    with engine.session(mode="audio") as session:
        session.push_audio(speech[: len(speech) // 2])
        session.push_audio(speech[len(speech) // 2 :], final=True)
        chunks = _run(session)
    audio = np.concatenate([c.audio for c in chunks])
    np.testing.assert_allclose(audio[: len(speech)], speech, atol=1e-6)
    assert session.speech_end == pytest.approx(len(speech) / tl.sample_rate)
    with pytest.raises(ValueError, match="push_audio"):
        engine.session(mode="audio").push_text("hello")


def test_dialogue_side_by_side_with_both_speakers(engine):
    a, b = engine.character("ada"), engine.character("ben")
    with engine.session([a, b]) as session:
        session.push_text("Hello Ben.", final=True, speaker=0)
        session.push_text("Hello Ada.", final=True, speaker=1)
        chunks = _run(session)
    assert chunks[0].frames.shape[1:] == (128, 256, 3)
    speakers = set(np.concatenate([c.speaker for c in chunks]).tolist())
    assert {0, 1} <= speakers
    lines = parse_dialogue("# a script\nA: Hi there.\n\nB: Hello!\nA: Bye.")
    assert [(x.speaker, x.text) for x in lines] == [(0, "Hi there."), (1, "Hello!"), (0, "Bye.")]
    with pytest.raises(ValueError, match="SPEAKER"):
        parse_dialogue("just text")
    with pytest.raises(ValueError, match="third"):
        parse_dialogue("X: a\nY: b\nZ: c")


def test_state_is_constant_and_close_frees_it(engine):
    session = engine.session(realtime=True, lookahead_chunks=0)
    session.push_text("Memory stays the same size however long we talk.", final=True)
    sizes = []
    for _ in range(8):
        session.next_chunk()
        sizes.append(session.state_nbytes())
    assert all(s["kv_cache"] == sizes[1]["kv_cache"] for s in sizes[1:])
    assert all(s["motion_latents"] == sizes[0]["motion_latents"] for s in sizes)
    cache = weakref.ref(session._cache)
    before = engine.sessions
    session.close()
    gc.collect()
    # the session's state is gone: its cache was freed, or went back, emptied, to the engine's bounded pool
    assert engine.sessions == before - 1 and session._cache is None
    assert cache() is None or (any(c is cache() for c in engine._free_caches) and not cache().segments)
    with pytest.raises(SessionClosed):
        session.push_text("anyone there?")


def test_bad_input_is_refused_and_the_session_goes_on(engine):
    with engine.session() as session:
        with pytest.raises(TextError):
            session.push_text("x" * 200_000)
        with pytest.raises(ValueError, match="speaker"):
            session.push_text("hello", speaker=1)
        session.push_text("Still fine.", final=True)
        assert any(not c.listening for c in _run(session))
    with pytest.raises(ValueError, match="empty"):
        render_text(engine, engine.character(), "   ", "/tmp/never.mp4")


def test_clock_deadlines_and_stalls():
    now = [0.0]
    clock = PlaybackClock(lambda: now[0])
    assert clock.schedule(0.0, 1.0) == (1.0, False)  # playback starts when the first chunk is ready
    assert clock.schedule(0.5, 1.2) == (1.5, False)
    deadline, missed = clock.schedule(1.0, 2.3)  # 0.3 s late: a stall moves every later slot
    assert missed and deadline == 2.0 and clock.stalled == pytest.approx(0.3)
    assert clock.wall_of(1.5) == pytest.approx(2.8)
    now[0] = 2.8
    assert clock.media_now() == pytest.approx(1.5)


def test_generate_cli_mp4_is_in_sync(tmp_path):
    out = tmp_path / "hello.mp4"
    run = subprocess.run(
        [".venv/bin/streamchar", "-q", "generate", "--text", "Hello, nice to meet you.", "--out", str(out),
         "engine.tail_seconds=1.0", "engine.compile=off"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert "ada: voice ada" in run.stderr
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(out)],
        capture_output=True, text=True, check=True).stdout)  # fmt: skip
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    video_s, audio_s = float(streams["video"]["duration"]), float(streams["audio"]["duration"])
    aac_frame = 1024 / int(streams["audio"]["sample_rate"])
    assert abs(video_s - audio_s) < aac_frame
    assert float(streams["video"]["start_time"]) == 0.0 and float(streams["audio"]["start_time"]) == 0.0
    # the file holds the planned speech plus the listening tail
    assert abs(audio_s - (summary["speech_seconds"] + 1.0)) <= 1 / 25 + aac_frame
    # decoded back, audio starts with the first frame; speech (default 4 steps, guided) is far louder than
    # the listening tail
    from streamchar.media import read_video_timed

    frames, times, audio = read_video_timed(out, 16000)
    assert times[0] == 0.0 and abs(len(audio) - len(frames) * 640) < 1024 / 3
    speech = audio[: int(summary["speech_seconds"] * 16000)]
    tail = audio[int((summary["speech_seconds"] + 0.2) * 16000) :]
    assert np.sqrt(np.mean(speech**2)) > 5 * np.sqrt(np.mean(tail**2))


def test_mp4_sink_cuts_inside_the_last_chunk(tmp_path, engine):
    from streamchar.media import read_video_timed

    tl = engine.timeline
    with engine.session() as session:
        session.push_text("Hi.", final=True)
        sink = Mp4Sink(tmp_path / "cut.mp4", tl)
        for chunk in session:
            sink.write(chunk)
        n = session.stats.chunks
        path = sink.close(end_seconds=(n - 1) * tl.chunk_seconds + 0.2)
    frames, _, audio = read_video_timed(path, tl.sample_rate)
    assert len(frames) == (n - 1) * 12 + 5
    assert abs(len(audio) - len(frames) * tl.samples_per_video_frame) < 1024 / 3


def test_generate_cli_audio_driven_and_dialogue(tmp_path):
    from streamchar.config import resolve_asset_path
    from streamchar.media import load_audio, read_video_timed

    wav = resolve_asset_path("checkpoints/tiny/characters/ben/voice.wav")
    out = tmp_path / "driven.mp4"
    argv = [".venv/bin/streamchar", "-q", "generate", "--audio", str(wav), "--out", str(out), "--steps", "1",
            "engine.tail_seconds=0.5", "engine.compile=off"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    frames, _, audio = read_video_timed(out, 16000)
    speech = load_audio(wav, 16000)
    assert abs(len(frames) / 25 - (len(speech) / 16000 + 0.5)) <= 1 / 25
    # the given speech is what the file plays (AAC is lossy: compare loudness envelopes per frame)
    n = len(speech) // 640
    env = lambda x: np.sqrt((x[: n * 640].reshape(n, 640) ** 2).mean(1))  # noqa: E731
    assert np.corrcoef(env(speech), env(audio))[0, 1] > 0.95

    script = tmp_path / "script.txt"
    script.write_text("A: Good evening.\nB: Good evening to you.\n")
    out = tmp_path / "dialogue.mp4"
    run = subprocess.run([".venv/bin/streamchar", "-q", "generate", "--dialogue", str(script), "--out", str(out),
                          "--steps", "1", "--voice", str(wav), "engine.compile=off"], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"ada: voice {wav}" in run.stderr and "ben: voice ben" in run.stderr
    frames, _, _ = read_video_timed(out, 16000)
    assert frames.shape[1:] == (128, 256, 3)


@pytest.mark.gpu
def test_cuda_stream_decode_matches_the_inline_decode():
    cfg = load_config("tiny", ["engine.steps=2", "engine.device=cuda"])
    engine = Engine.from_config(cfg)
    outputs = []
    for overlap in (True, False):
        with engine.session(decode_overlap=overlap, seed=5) as session:
            assert (session._decode_cuda is not None) == overlap
            session.push_text("The decoder runs on its own stream.", final=True)
            outputs.append(_run(session))
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_allclose(a.audio, b.audio, atol=1e-5)


def test_live_audio_in_blocks_plays_back_without_gaps(engine):
    """A microphone sends blocks; a live session waits for speech on its way instead of padding silence."""
    import threading
    import time

    speech = np.concatenate([engine.character("ben").voice] * 2)
    session = engine.session(mode="audio", realtime=True)
    blocks = [speech[i : i + 4096] for i in range(0, len(speech), 4096)]

    def microphone():
        try:
            for block in blocks:
                session.push_audio(block)
                time.sleep(0.24)  # a little faster than real time (4096 samples = 0.256 s)
        except SessionClosed:
            pass  # the test has what it needs

    feeder = threading.Thread(target=microphone, daemon=True)
    try:
        feeder.start()
        need = len(speech) // 7680
        played = np.concatenate([session.next_chunk(timeout=30).audio for _ in range(need)])
        np.testing.assert_allclose(played, speech[: len(played)], atol=1e-6)
    finally:
        session.close()
        feeder.join(timeout=10)


@pytest.mark.parametrize("switch", ["sink", "motion_frames"])
def test_sink_and_motion_ablations_leave_their_segment_out_of_the_window(engine, monkeypatch, switch):
    from streamchar.memory.window import MOTION, SINK

    monkeypatch.setattr(engine.cfg.engine, switch, False)
    with engine.session(decode_overlap=False) as session:
        session.push_text("One two three four five.", final=True)
        chunks = _run(session)
        segments = set(session._cache.segments)
    assert len(chunks) >= 3
    assert (SINK in segments, MOTION in segments) == ((False, True) if switch == "sink" else (True, False))


def test_realignment_reads_the_speech_and_keeps_overlap_on_and_off_equal(engine):
    assert engine.phoneme_reader is not None  # the shipped recognizer (engine.phoneme_reader)
    outputs = []
    for overlap in (True, False):
        with engine.session(decode_overlap=overlap, seed=5) as session:
            session.push_text("Hello there, how are you doing on this fine day?", final=True)
            chunks = _run(session)
            outputs.append((np.stack([c.frames for c in chunks[:8]]), session.orchestrator.pointer))
            lags = list(session.stats.realign_lag)
        assert len(lags) >= 3  # realigned on every spoken chunk's speech, two chunks later
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    assert outputs[0][1] == outputs[1][1]


@pytest.mark.parametrize("switch", ["sink", "motion_frames", None])
def test_context_cache_off_recomputes_the_window_and_gives_the_same_chunks(engine, monkeypatch, switch):
    """The K/V cache ablation: the whole window at every step, with or without the sink / motion frames (in
    float32, where the two orders of summation agree to rounding).

    The denoised latents must agree to rounding. The decoded audio is compared loosely: Griffin-Lim
    normalises the phase of every STFT bin, and in near-silent bins a latent change of 1e-7 moves the
    samples by up to 2e-4 (measured on the tiny model's output), so the samples cannot show more."""
    from streamchar.engine.session import StreamSession

    if switch is not None:
        monkeypatch.setattr(engine.cfg.engine, switch, False)
    denoise = StreamSession._denoise_next
    latents: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def recording(session):
        result = denoise(session)
        if result is not None:
            latents[-1].append((result[5].clone(), result[6].clone()))  # (video, audio) latents
        return result

    monkeypatch.setattr(StreamSession, "_denoise_next", recording)
    precision = engine.precision
    outputs = []
    try:
        engine.precision = "no"
        engine.apply_fast_path()
        for cached in (True, False):
            monkeypatch.setattr(engine.cfg.engine, "context_cache", cached)
            latents.append([])
            with engine.session(decode_overlap=False, seed=5) as session:
                session.push_text("One two three four.", final=True)
                outputs.append(_run(session))
                if not cached:
                    assert not session._cache.segments  # nothing was cached
    finally:
        engine.precision = precision
        engine.apply_fast_path()
    assert len(outputs[0]) == len(outputs[1]) >= 3
    for (video_a, audio_a), (video_b, audio_b) in zip(*latents, strict=True):
        torch.testing.assert_close(video_a, video_b, atol=1e-5, rtol=0)
        torch.testing.assert_close(audio_a, audio_b, atol=1e-5, rtol=0)
    for a, b in zip(*outputs, strict=True):
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1
        np.testing.assert_allclose(a.audio, b.audio, atol=2e-3)


def test_a_closed_sessions_cache_is_reused_by_the_next(engine):
    """The same buffers at the same addresses (a CUDA graph recorded for them replays), reset in between."""
    with engine.session(decode_overlap=False) as first:
        first.push_text("One.", final=True)
        _run(first)
        cache = first._cache
        assert cache.segments
    with engine.session(decode_overlap=False) as second:  # only its own reference so far
        assert second._cache is cache and set(cache.segments) == {0}


def _count_compiled_calls(monkeypatch, fail: bool) -> list[int]:
    """Stand in for torch.compile in the denoiser's ``compile_step``: the "compiled" step counts its calls (or
    fails as a compiler without a working toolchain would); returns the counter."""
    from streamchar.denoiser import dit

    calls = [0]

    def fake_compile(fn, **kwargs):
        def step(*args, **kw):
            calls[0] += 1
            if fail:
                raise RuntimeError("InductorError: C++ compile error\n(no g++)")
            return fn(*args, **kw)

        return step

    monkeypatch.setattr(dit.torch, "compile", fake_compile)
    return calls


@pytest.mark.parametrize("fail", [False, True], ids=["compiles", "compiler-fails"])
def test_a_compiled_step_is_compiled_at_build_or_falls_back_to_eager(monkeypatch, caplog, fail):
    """engine.compile=on: the engine runs a warm-up session at build, so no real session waits for the
    compiler; a compiler that fails costs a warning and the eager step, not the session."""
    calls = _count_compiled_calls(monkeypatch, fail)
    cfg = load_config("tiny", ["engine.steps=1", "engine.compile=on", "engine.tail_seconds=0.2"])
    with caplog.at_level("INFO", logger="streamchar.engine.engine"):
        engine = Engine.from_config(cfg)
    assert calls[0] >= 1  # the warm-up ran the step through the compiled path
    if fail:
        assert engine.fast_path["compile"] == "off" and engine.denoiser._compiled_step is None
        assert "running it eagerly" in caplog.text and "C++ compile error" in caplog.text
    else:
        assert engine.fast_path["compile"] == "default" and "compiled the denoising step" in caplog.text
    before = calls[0]
    session = engine.session(tail_seconds=0.2)
    session.push_text("Hi.", final=True)
    chunks = list(session)
    assert chunks and all(np.isfinite(c.audio).all() for c in chunks)
    assert (calls[0] > before) == (not fail)  # compiled: the session uses it; failed: it is never tried again
