"""Decoder disaggregation on CPU with gloo: two processes decode exactly as one, and a bad request or a
failed decoder server is an error on the engine's side, never a hang."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from streamchar.config import load_config
from streamchar.engine.disagg import (
    HEADER_SLOTS,
    DecoderClient,
    DecoderServerError,
    Message,
    Op,
    encode_header,
    serve_decoders,
)
from streamchar.engine.split_run import SplitRunError, _free_port, choose_backend, run_split

OVERRIDES = ["engine.steps=1", "engine.guidance_conditions=1.0", "engine.guidance_ref_image=1.0",
             "engine.guidance_ref_voice=1.0", "engine.tail_seconds=0.5", "engine.realign=false",
             "engine.compile=off"]  # fmt: skip
pytestmark = pytest.mark.timeout(180)


def _tiny():
    return load_config("tiny", OVERRIDES)


# -- rank 0 of the split run (module level: spawned processes import it) ----------------------------------
def _sessions(engine) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(frames, audio) of every chunk of a text, a dialogue and an audio-driven session."""
    out = {}
    with engine.session(seed=3) as session:
        session.push_text("One two three.", final=True)
        out["text"] = [(c.frames, c.audio) for c in session]
    with engine.session([engine.character("ada"), engine.character("ben")], seed=4) as session:
        session.push_text("Hi.", final=True, speaker=1)
        out["dialogue"] = [(c.frames, c.audio) for c in session]
    rate = engine.timeline.sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(0.6 * rate)) / rate)).astype(np.float32)
    with engine.session(mode="audio", seed=5) as session:
        session.push_audio(tone, final=True)
        out["audio"] = [(c.frames, c.audio) for c in session]
    return out


def _bad_requests(client: DecoderClient) -> dict[str, str]:
    """The server's answers to requests it must refuse (each an error on this side)."""
    errors = {}
    attempts = {
        "unknown": Message(99, tensors=(torch.zeros(3),)),
        "not_open": Message(Op.DECODE, 12345, tensors=(torch.zeros(1, 8, 3, 16, 16),)),
        "wrong_channels": Message(Op.DECODE, client.open(1, None), tensors=(torch.zeros(1, 3, 3, 16, 16),)),
    }
    for name, message in attempts.items():
        try:
            client.request(message)
            errors[name] = "accepted"
        except DecoderServerError as err:
            errors[name] = str(err)
    with client._lock:  # a header no client would write: the server answers ERROR and goes on
        bad = encode_header(Message(Op.OPEN, 1))
        bad[0] = 7
        client._link.send_header(bad, client.timeout)
        reply = client._link.recv(client.timeout)
    errors["malformed"] = reply.text if reply.op == Op.ERROR else "accepted"
    return errors


def _split_main(engine) -> dict:
    """Refused requests first (the server must go on serving), then the sessions decoded on the server,
    then the same sessions decoded in this process (``decoder_factory`` None: the one-process engine)."""
    errors = _bad_requests(engine.decoder_factory)
    remote = _sessions(engine)
    client, engine.decoder_factory = engine.decoder_factory, None
    local = _sessions(engine)
    engine.decoder_factory = client
    return {"remote": remote, "local": local, "errors": errors, "threads": torch.get_num_threads()}


def _failing_main(engine) -> None:
    with engine.session() as session:
        session.push_text("Hi.", final=True)
        next(iter(session))
        raise ValueError("boom after the first chunk")


@pytest.fixture(scope="module")
def split_run():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # every spawned process: one thread, so sums run alike
        started = time.perf_counter()
        result = run_split(_tiny(), _split_main, backend="gloo")
    result["seconds"] = time.perf_counter() - started
    return result


@pytest.mark.parametrize("kind", ["text", "dialogue", "audio"])
def test_two_processes_decode_exactly_as_one(split_run, kind):
    assert split_run["threads"] == 1
    remote, local = split_run["remote"][kind], split_run["local"][kind]
    assert len(remote) == len(local) >= 2
    for (frames, audio), (frames_local, audio_local) in zip(remote, local, strict=True):
        assert frames.dtype == np.uint8 and audio.dtype == np.float32
        np.testing.assert_array_equal(frames, frames_local)
        np.testing.assert_array_equal(audio, audio_local)
    if kind == "dialogue":
        assert remote[0][0].shape[2] == 2 * remote[0][0].shape[1]  # two characters side by side


def test_refused_requests_are_errors_and_the_server_goes_on(split_run):
    errors = split_run["errors"]
    assert "unknown request 99" in errors["unknown"]
    assert "session 12345 is not open" in errors["not_open"]
    assert "failed on DECODE" in errors["wrong_channels"] and "Latents must be" in errors["wrong_channels"]
    assert "malformed header" in errors["malformed"]
    assert split_run["remote"]["text"]  # the sessions after them still ran on the server


def test_a_failing_main_is_raised_in_the_caller_and_both_processes_stop(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(SplitRunError, match="_failing_main failed .*ValueError: boom") as caught:
        run_split(_tiny(), _failing_main, backend="gloo")
    assert "decoder server failed" not in str(caught.value)  # the server was shut down, not lost
    assert "boom after the first chunk" in caught.value.remote_traceback


def test_backend_choice_is_checked():
    with pytest.raises(ValueError, match="Unknown backend"):
        choose_backend("mpi")
    if torch.cuda.device_count() < 2:
        assert choose_backend() == "gloo"
        with pytest.raises(ValueError, match="NCCL"):
            choose_backend("nccl")
    header = encode_header(
        Message(Op.DECODE, 7, tensors=(torch.zeros(2, 8, 3, 16, 16), torch.zeros(2, 5, 4)))
    )
    assert header.shape == (HEADER_SLOTS,) and header[1:3].tolist() == [Op.DECODE, 7]
    with pytest.raises(ValueError, match="dims"):
        encode_header(Message(Op.DECODE, tensors=(torch.zeros(1, 1, 1, 1, 1, 1),)))


# -- a server that dies or freezes mid-session ------------------------------------------------------------
def _against_a_failing_server(rank: int, port: int, failure: str, folder: str) -> None:
    """Rank 1 serves; rank 0 opens a session, kills (SIGKILL) or freezes (SIGSTOP) the server, then
    decodes: the error (and how long it took) is left in ``folder``."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=30))
    if rank == 1:
        (Path(folder) / "server.pid").write_text(str(os.getpid()))
        serve_decoders(_tiny(), timeout=30)
        return
    client = DecoderClient(1, timeout=2.0)
    decoder = client(1, None)
    server = int((Path(folder) / "server.pid").read_text())
    os.kill(server, signal.SIGKILL if failure == "dies" else signal.SIGSTOP)
    latents = torch.zeros(1, 8, 3, 16, 16)
    started = time.perf_counter()
    answers = []
    for _ in range(2):  # the failure, then a request on the broken channel
        try:
            decoder.decode(latents, None)
            answers.append("decoded")
        except DecoderServerError as err:
            answers.append(f"{time.perf_counter() - started:.2f} {err}")
    decoder.close()
    client.shutdown()  # both quiet once the server is gone
    if failure == "freezes":
        os.kill(server, signal.SIGKILL)
    (Path(folder) / "answers.txt").write_text("\n".join(answers))
    dist.destroy_process_group()


@pytest.mark.parametrize("failure", ["dies", "freezes"])
def test_a_dead_or_frozen_server_is_an_error_not_a_hang(tmp_path, failure):
    port = _free_port()
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_against_a_failing_server, args=(rank, port, failure, str(tmp_path)))
             for rank in (0, 1)]  # fmt: skip
    for process in ranks:
        process.start()
    for process in ranks:  # rank 0 kills the server; anything still alive after a minute has hung
        process.join(timeout=60)
    hung = [rank for rank, process in enumerate(ranks) if process.is_alive()]
    for rank in hung:
        ranks[rank].kill()
        ranks[rank].join()
    assert not hung, f"rank(s) {hung} of the {failure} run hung"
    answers = (tmp_path / "answers.txt").read_text().splitlines()
    assert len(answers) == 2 and all("stopped answering" in a for a in answers), answers
    first, second = (float(a.split()[0]) for a in answers)
    assert first < (1.5 if failure == "dies" else 8.0)  # freezes: the 2 s request timeout
    assert second - first < 0.5  # the broken channel is not waited on again
    assert ranks[0].exitcode == 0
