"""Decoder disaggregation: the denoiser on one process (and GPU), the video and audio decoders on another.

    def main(engine, text):                          # rank 0: an Engine whose decoders live on rank 1
        with engine.session() as session:
            session.push_text(text, final=True)
            return [chunk.frames for chunk in session]

    frames = run_split(cfg, main, "Hello there.")    # streamchar.engine.split_run: NCCL with two GPUs, else gloo

Rank 0 runs the engine (orchestrator, denoiser, the codecs' encoders) with a :class:`RemoteDecoder` per
session in place of a local one: each chunk's latents go to rank 1 as soon as they are denoised, and its
frames and PCM come back while rank 0 denoises the next chunk. Rank 1 (:func:`serve_decoders`) builds only
the codecs and keeps one :class:`~streamchar.engine.decode.LocalDecoder` (the streaming decoders' state)
per open session. Under your own launcher (``torchrun``) call :func:`serve_decoders` on the decoder rank
and :func:`split_decoders` on the engine's rank after ``init_process_group``.

On the wire every message is a fixed int64 header (magic, request, session, two arguments, then the dtype
and shape of up to two payload tensors) followed by its payload tensors. Headers travel on a gloo group of
their own, where every wait has a time limit (a silent or dead peer is an error, not a hang, and an idle
server holds no NCCL operation open); payloads travel on the default group, GPU to GPU under NCCL. Every
request gets one reply (OK with its results, or ERROR with the server's message), and the requests of all
sessions take turns under one lock.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import os
import threading
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from streamchar.engine.decode import LocalDecoder
from streamchar.engine.engine import Engine

logger = logging.getLogger(__name__)

MAGIC = 0x5C_DEC0DE  # first header slot of every message
MAX_TENSORS = 2  # payload tensors per message
MAX_DIMS = 5  # dims per payload tensor (latent video [B, C, L, h, w])
HEADER_SLOTS = 6 + MAX_TENSORS * (2 + MAX_DIMS)  # magic, op, session, 2 args, count, (dtype, ndim, dims)*
_DTYPES = (torch.float32, torch.uint8, torch.int64, torch.bfloat16, torch.float16)  # header dtype codes
_MAX_ELEMENTS = 1 << 31  # a larger payload means a corrupt header
_NO_LIMIT = 30 * 24 * 3600.0  # "wait forever" (gloo turns every wait into a deadline)
SERVER_RANK = 1  # run_split's decoder rank


class Op(enum.IntEnum):
    """Requests (rank 0 -> server) and replies (server -> rank 0)."""

    READY = 1  # server: the codecs are built (its first message)
    OPEN = 2  # session, (characters, audio context tokens or -1)
    DECODE = 3  # session; video [B, C, L, h, w] float32, audio [B, L_a, D_a] (optional)
    CLOSE = 4  # session
    SHUTDOWN = 5
    OK = 6  # reply; DECODE: frames uint8 [T, H, W * B, 3], wave float32 [N] (optional)
    ERROR = 7  # reply; the server's message as utf-8 bytes (uint8 [n])


class DecoderServerError(RuntimeError):
    """The decoder server refused or failed a request, or stopped answering."""


class _ProtocolError(ValueError):
    """A header that does not parse (wrong magic, impossible dtype or shape)."""


@dataclass(frozen=True)
class Message:
    """One message: ``op`` for ``session`` with two integer ``args`` and up to two payload ``tensors``."""

    op: int
    session: int = 0
    args: tuple[int, int] = (0, 0)
    tensors: tuple[torch.Tensor, ...] = ()

    @classmethod
    def error(cls, text: str) -> Message:
        return cls(Op.ERROR, tensors=(torch.tensor(list(text.encode()), dtype=torch.uint8),))

    @property
    def text(self) -> str:
        """An ERROR's message."""
        return bytes(self.tensors[0].cpu().numpy()).decode(errors="replace") if self.tensors else ""


def _op_name(op: int) -> str:
    return Op(op).name if op in Op._value2member_map_ else str(op)


def encode_header(message: Message) -> torch.Tensor:
    """``message`` without its payload -> int64 ``[HEADER_SLOTS]``."""
    if len(message.tensors) > MAX_TENSORS:
        raise ValueError(f"A message carries at most {MAX_TENSORS} tensors, got {len(message.tensors)}.")
    slots = [MAGIC, int(message.op), int(message.session), *map(int, message.args), len(message.tensors)]
    for tensor in message.tensors:
        if tensor.dtype not in _DTYPES or tensor.dim() > MAX_DIMS:
            raise ValueError(
                f"Cannot send a {tensor.dtype} tensor of {tensor.dim()} dims; send up to {MAX_DIMS} dims of "
                f"one of {[str(d) for d in _DTYPES]}."
            )
        dims = list(tensor.shape) + [0] * (MAX_DIMS - tensor.dim())
        slots += [_DTYPES.index(tensor.dtype), tensor.dim(), *dims]
    return torch.tensor(slots + [0] * (HEADER_SLOTS - len(slots)), dtype=torch.int64)


def _decode_header(header: torch.Tensor) -> tuple[Message, list[tuple[torch.dtype, list[int]]]]:
    """int64 ``[HEADER_SLOTS]`` -> (the message without payload, the payload's (dtype, shape)s)."""
    slots = header.tolist()
    magic, op, session, arg0, arg1, count = slots[:6]
    if magic != MAGIC or not 0 <= count <= MAX_TENSORS:
        raise _ProtocolError(f"malformed header (magic {magic:#x}, {count} tensors)")
    specs = []
    for i in range(count):
        code, ndim, *dims = slots[6 + i * (2 + MAX_DIMS) : 6 + (i + 1) * (2 + MAX_DIMS)]
        dims = dims[:ndim] if 0 <= ndim <= MAX_DIMS else [-1]
        if not 0 <= code < len(_DTYPES) or min(dims, default=0) < 0 or math.prod(dims) > _MAX_ELEMENTS:
            raise _ProtocolError(f"malformed header (tensor {i}: dtype code {code}, shape {dims})")
        specs.append((_DTYPES[code], dims))
    return Message(op, session, (arg0, arg1)), specs


class Link:
    """One end of the channel to ``peer``: headers on ``control`` (a gloo group), payloads on the default
    group as tensors on ``device`` (the backend's: CUDA under NCCL, CPU under gloo).

    Every wait takes ``timeout`` seconds at most (None: no limit); a peer that went away or did not answer
    in time raises ``ConnectionError``, after which the channel is unusable (gloo closes it).
    """

    def __init__(self, peer: int, device: torch.device, control: dist.ProcessGroup) -> None:
        self.peer, self.device, self.control = peer, device, control

    def send_header(self, header: torch.Tensor, timeout: float | None) -> None:
        self._wait(dist.isend(header, dst=self.peer, group=self.control), timeout, "sending a header")

    def send(self, message: Message, timeout: float | None) -> None:
        self.send_header(encode_header(message), timeout)
        for tensor in message.tensors:
            payload = tensor.detach().to(self.device).contiguous()
            self._wait(dist.isend(payload, dst=self.peer), timeout, "sending a payload")

    def recv(self, timeout: float | None) -> Message:
        """The next message; a header that does not parse raises ``_ProtocolError`` (its payload, if any,
        is left unread)."""
        header = torch.empty(HEADER_SLOTS, dtype=torch.int64)
        self._wait(dist.irecv(header, src=self.peer, group=self.control), timeout, "waiting for a header")
        message, specs = _decode_header(header)
        tensors = []
        for dtype, shape in specs:
            payload = torch.empty(shape, dtype=dtype, device=self.device)
            self._wait(dist.irecv(payload, src=self.peer), timeout, "waiting for a payload")
            tensors.append(payload)
        return Message(message.op, message.session, message.args, tuple(tensors))

    def _wait(self, work, timeout: float | None, doing: str) -> None:
        seconds = _NO_LIMIT if timeout is None else timeout
        try:
            work.wait(timeout=timedelta(seconds=seconds))
        except RuntimeError as err:
            cause = str(err).splitlines()[0].split(". This is typically")[0]  # gloo's advice does not apply
            raise ConnectionError(f"rank {self.peer} did not answer within {seconds:g} s ({doing}) or went "
                                  f"away: {cause}") from err  # fmt: skip


def _data_device() -> torch.device:
    """Where payload tensors live: the current CUDA device under NCCL, else the host."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _control_group(client_rank: int, server_rank: int, timeout: float | None) -> dist.ProcessGroup:
    """The two ranks' gloo group for headers (created by both, and only by them)."""
    seconds = _NO_LIMIT if timeout is None else timeout
    return dist.new_group(sorted((client_rank, server_rank)), timeout=timedelta(seconds=seconds),
                          backend="gloo", use_local_synchronization=True)  # fmt: skip


# -- the decoding side ------------------------------------------------------------------------------------
class DecoderHost:
    """What a :class:`~streamchar.engine.decode.LocalDecoder` needs of an engine, without the denoiser:
    the codecs on their device, the precision and the config."""

    autocast = Engine.autocast  # the engine's precision rule, on the decoders' device

    def __init__(self, cfg, video_codec, audio_codec, device: torch.device, precision: str) -> None:
        self.cfg, self.video_codec, self.audio_codec = cfg, video_codec, audio_codec
        self.device, self.precision = device, precision

    @classmethod
    def from_config(cls, cfg, device: torch.device, random_init: bool = False) -> DecoderHost:
        """The configured codecs (``random_init``: randomly initialised, as :meth:`Engine.random_init`)."""
        from streamchar.codecs.audio import build_audio_codec
        from streamchar.codecs.video import video_codec_from_config
        from streamchar.precision import resolve_mixed_precision

        if random_init:
            with torch.device(device):  # built in place
                video_codec = video_codec_from_config(cfg, random_init=True)
        else:
            video_codec = video_codec_from_config(cfg).to(device)
        audio_codec = build_audio_codec(cfg, cfg.timeline).to(device)
        return cls(cfg, video_codec, audio_codec, device, resolve_mixed_precision(cfg.engine.mixed_precision))


def _server_device(device: str | torch.device | None) -> torch.device:
    """The decoders' device: as given, else ``cuda:LOCAL_RANK`` under NCCL (the rank without it), else CPU."""
    if device is not None:
        return torch.device(device)
    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return torch.device("cpu")


def serve_decoders(cfg, client_rank: int = 0, device: str | torch.device | None = None,
                   timeout: float = 120.0, idle_timeout: float | None = None,
                   random_init: bool = False) -> None:  # fmt: skip
    """The decoder server: build the codecs on ``device``, then answer ``client_rank``'s requests until
    SHUTDOWN. Call it on the decoder rank after ``init_process_group``.

    Args:
        cfg: the config whose ``video_codec`` and ``audio_codec`` to build.
        client_rank: the engine's rank (the only one that sends requests).
        device: where the decoders run (default: ``cuda:LOCAL_RANK`` under NCCL, else the CPU).
        timeout: seconds a reply's transfer may take once the client asked for it.
        idle_timeout: seconds to wait for the next request (None: no limit).
        random_init: random codecs (timing a preset whose weights you do not have).

    Raises:
        ConnectionError: the client went away (or stayed silent past ``idle_timeout``) without SHUTDOWN.
    """
    device = _server_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    control = _control_group(client_rank, dist.get_rank(), idle_timeout)  # the client may still be loading
    link = Link(client_rank, _data_device(), control)
    try:
        host = DecoderHost.from_config(cfg, device, random_init)
    except Exception as err:
        link.send(Message.error(f"Building the codecs on {device} failed: {err}"), idle_timeout)
        raise
    link.send(Message(Op.READY), idle_timeout)
    logger.info("decoder server on %s (rank %d) serves rank %d", device, dist.get_rank(), client_rank)
    sessions: dict[int, LocalDecoder] = {}
    while True:
        try:
            request = link.recv(idle_timeout)
        except _ProtocolError as err:
            logger.error("refused a request: %s", err)
            link.send(Message.error(f"The server refused a {err}; client and server must run the same "
                                    "StreamChar version."), timeout)  # fmt: skip
            continue
        if request.op == Op.SHUTDOWN:
            for decoder in sessions.values():
                decoder.close()
            link.send(Message(Op.OK), timeout)
            logger.info("decoder server on %s shut down", device)
            return
        try:
            reply = _answer(host, sessions, request, link.device)
        except Exception as err:
            logger.exception(
                "decoder server: %s for session %d failed", _op_name(request.op), request.session
            )
            reply = Message.error(f"{type(err).__name__}: {err}")
        link.send(reply, timeout)


def _answer(host: DecoderHost, sessions: dict[int, LocalDecoder], request: Message,
            data_device: torch.device) -> Message:  # fmt: skip
    """The OK reply to one OPEN, DECODE or CLOSE request (raises for anything wrong with it)."""
    session = request.session
    if request.op == Op.OPEN:
        characters, context = request.args
        if session in sessions:
            raise ValueError(f"session {session} is already open")
        if characters < 1:
            raise ValueError(f"a session plays one character or more, got {characters}")
        sessions[session] = LocalDecoder(host, characters, context if context >= 0 else None,
                                         side_stream=False, pinned=False)  # fmt: skip
        return Message(Op.OK, session)
    if request.op == Op.DECODE:
        if session not in sessions:
            raise ValueError(f"session {session} is not open")
        if not 1 <= len(request.tensors) <= 2 or request.tensors[0].dim() != 5:
            shapes = [tuple(t.shape) for t in request.tensors]
            raise ValueError(
                f"DECODE takes video [B, C, L, h, w] and optional audio [B, L_a, D_a], got {shapes}"
            )
        video = request.tensors[0].to(host.device)  # [B, C, L, h, w]
        audio = request.tensors[1].to(host.device) if len(request.tensors) == 2 else None  # [B, L_a, D_a]
        frames, wave = sessions[session].decode_on_device(video, audio)  # [T, H, W * B, 3], [N] or None
        results = (frames,) if wave is None else (frames, wave)
        return Message(Op.OK, session, tensors=tuple(t.to(data_device) for t in results))
    if request.op == Op.CLOSE:
        decoder = sessions.pop(session, None)
        if decoder is not None:
            decoder.close()
        return Message(Op.OK, session)
    raise ValueError(
        f"unknown request {_op_name(request.op)} (the server knows OPEN, DECODE, CLOSE, SHUTDOWN)"
    )


# -- the engine's side --------------------------------------------------------------------------------------
class DecoderClient:
    """The engine's end: waits for the server's READY, then opens a :class:`RemoteDecoder` per session
    (it is the engine's ``decoder_factory``) and carries their requests, one at a time.

    Args:
        server_rank: the decoder server's rank.
        timeout: seconds any request (its transfer, the server's work, the reply) may take; past it the
            server counts as gone.
        start_timeout: seconds the server has to join and build its codecs.

    Raises:
        DecoderServerError: the server failed to start, or did not answer in time.
    """

    def __init__(self, server_rank: int = SERVER_RANK, timeout: float = 120.0,
                 start_timeout: float = 600.0) -> None:  # fmt: skip
        self.server_rank, self.timeout = server_rank, timeout
        self._lock = threading.Lock()  # one request and its reply at a time, whatever the session
        self._ids = itertools.count(1)
        self._broken: str | None = None  # why the channel is unusable
        self._stopped = False
        try:
            control = _control_group(dist.get_rank(), server_rank, start_timeout)
            self._link = Link(server_rank, _data_device(), control)
            ready = self._link.recv(start_timeout)
        except (ConnectionError, RuntimeError) as err:
            raise DecoderServerError(f"The decoder server on rank {server_rank} did not start within "
                                     f"{start_timeout:g} s ({err}); check its log.") from err  # fmt: skip
        if ready.op == Op.ERROR:
            self._stopped = True
            raise DecoderServerError(
                f"The decoder server on rank {server_rank} failed to start: {ready.text}"
            )
        logger.info("decoders on rank %d (payloads on %s)", server_rank, self._link.device)

    def __call__(self, characters: int, audio_context_tokens: int | None) -> RemoteDecoder:
        return RemoteDecoder(self, characters, audio_context_tokens)

    def request(self, message: Message) -> Message:
        """Send one request and return the server's OK reply; an ERROR reply, or no reply in time, raises
        :class:`DecoderServerError`."""
        with self._lock:
            if self._broken is not None:
                raise DecoderServerError(self._broken)
            if self._stopped:
                raise DecoderServerError("The decoder server was shut down; start a new split run.")
            try:
                self._link.send(message, self.timeout)
                reply = self._link.recv(self.timeout)
            except (ConnectionError, _ProtocolError) as err:
                self._broken = (f"The decoder server on rank {self.server_rank} stopped answering: {err}; "
                                "start a new split run.")  # fmt: skip
                raise DecoderServerError(self._broken) from err
        if reply.op == Op.ERROR:
            raise DecoderServerError(
                f"The decoder server failed on {_op_name(message.op)} for session {message.session}: {reply.text}"
            )
        return reply

    def open(self, characters: int, audio_context_tokens: int | None) -> int:
        """A new session's id on the server."""
        session = next(self._ids)
        context = -1 if audio_context_tokens is None else int(audio_context_tokens)
        self.request(Message(Op.OPEN, session, (int(characters), context)))
        return session

    def close_session(self, session: int) -> None:
        """Free a session's decoders on the server (nothing to do once the server is gone)."""
        if self._stopped or self._broken is not None:
            return
        try:
            self.request(Message(Op.CLOSE, session))
        except DecoderServerError as err:
            logger.warning("closing session %d on the decoder server: %s", session, err)

    def shutdown(self) -> None:
        """Stop the server (once; nothing happens when it is already stopped or gone)."""
        if self._stopped or self._broken is not None:
            return
        try:
            self.request(Message(Op.SHUTDOWN))
        except DecoderServerError as err:
            logger.warning("shutting the decoder server down: %s", err)
        finally:
            self._stopped = True

    @property
    def running(self) -> bool:
        return not self._stopped and self._broken is None


class RemoteDecoder:
    """One session's decoders on the decoder server (a :class:`~streamchar.engine.decode.ChunkDecoder`)."""

    def __init__(self, client: DecoderClient, characters: int, audio_context_tokens: int | None) -> None:
        self.client = client
        self.session = client.open(characters, audio_context_tokens)
        self._open = True

    def decode(
        self, video: torch.Tensor, audio: torch.Tensor | None, ready: torch.cuda.Event | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Latents ``[B, C, L, h, w]`` (and ``[B, L_a, D_a]`` or None) -> ``(frames uint8 [T, H, W * B, 3],
        wave float32 [N] or None)``, decoded on the server."""
        if not self._open:
            raise DecoderServerError("This session's decoders are closed; open a new session.")
        if ready is not None:  # the latents come from the denoiser's stream
            torch.cuda.current_stream(video.device).wait_event(ready)
        tensors = (video,) if audio is None else (video, audio)
        reply = self.client.request(Message(Op.DECODE, self.session, tensors=tensors))
        frames = reply.tensors[0].cpu().numpy()  # [T, H, W * B, 3]
        wave = reply.tensors[1].cpu().numpy() if len(reply.tensors) > 1 else None  # [N]
        return frames, wave

    def close(self) -> None:
        if self._open:
            self._open = False
            self.client.close_session(self.session)


def split_decoders(engine: Engine, server_rank: int = SERVER_RANK, timeout: float = 120.0,
                   start_timeout: float = 600.0) -> DecoderClient:  # fmt: skip
    """Decode ``engine``'s sessions on the decoder server at ``server_rank`` (which runs
    :func:`serve_decoders`): waits for the server, then installs the client as ``engine.decoder_factory``
    (``timeout`` and ``start_timeout`` as in :class:`DecoderClient`)."""
    client = DecoderClient(server_rank, timeout, start_timeout)
    engine.decoder_factory = client
    return client


def stop_decoders(engine: Engine) -> None:
    """Shut down the decoder server of ``engine`` (see :func:`split_decoders`); sessions opened later
    decode locally."""
    client = engine.decoder_factory
    if isinstance(client, DecoderClient):
        client.shutdown()
        engine.decoder_factory = None
