"""Speech with exact word and phoneme timings from libespeak-ng, through ctypes.

libespeak-ng initialised with ``espeakINITIALIZE_PHONEME_EVENTS`` in synchronous mode calls our
callback with audio blocks and a list of events; each word and phoneme event carries the
sample index at which it starts. A phoneme lasts until the next phoneme, word or end event.
The library is a process-wide singleton in C that carries state from one message to the next
(its wave generator's phase and pitch flutter, measured: the same text and voice come out a few
samples shorter or longer depending on what was spoken before, even with another voice, and
``espeak_Terminate`` followed by ``espeak_Initialize`` hangs). So that the same text and voice
always give the same samples, :func:`get_espeak` returns a :class:`IsolatedEspeak` on POSIX: a
zygote process holds a freshly initialised library and never speaks; each request forks it, the
fork speaks once from that pristine state and exits. Text to phonemes without audio is
:mod:`streamchar.data.phonemizer`.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import pickle
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7

# phoneme mnemonics espeak uses for pauses
PAUSE_PHONEMES = frozenset({"_", "_:", "_!", "_^_", "_|", "||", "|"})


class EspeakError(RuntimeError):
    """libespeak-ng is missing or refused a request."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Voice:
    """One character's voice: an espeak-ng voice with a variant, pitch, pitch range and rate."""

    language: str = "en-us"
    variant: str = ""
    pitch: int = 50  # 0..100
    pitch_range: int = 50  # 0..100
    rate: int = 165  # words per minute, 80..450

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language

    def to_dict(self) -> dict:
        return {
            "language": self.language,
            "variant": self.variant,
            "pitch": self.pitch,
            "pitch_range": self.pitch_range,
            "rate": self.rate,
        }


@dataclass(frozen=True)
class TimedUnit:
    """A word or phoneme with its time span in seconds."""

    label: str
    start: float
    end: float


@dataclass(frozen=True)
class Utterance:
    """Synthesised speech: float32 waveform ``[N]`` at ``sample_rate`` with word and phoneme spans.

    Pause phonemes (``_``, ``_:``) are kept in ``phonemes`` so that timings tile the utterance;
    :data:`PAUSE_PHONEMES` tells them apart.
    """

    samples: np.ndarray
    sample_rate: int
    words: tuple[TimedUnit, ...]
    phonemes: tuple[TimedUnit, ...]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def _find_library() -> str:
    for name in ("libespeak-ng.so.1", ctypes.util.find_library("espeak-ng") or "", "libespeak-ng.dylib"):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    raise EspeakError(
        "libespeak-ng was not found; install espeak-ng (apt-get install espeak-ng, or run `make setup`)."
    )


class Espeak:
    """The process's libespeak-ng. Use :func:`get_espeak` rather than constructing it."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(_find_library())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.native_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        )
        if self.native_rate <= 0:
            raise EspeakError(
                "espeak_Initialize failed; check that espeak-ng-data is installed with espeak-ng."
            )
        self._lock = threading.Lock()
        self._blocks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, str]] = []
        self._callback = _Callback(self._on_synth)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._blocks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                label = bytes(ev.id.string).split(b"\0")[0].decode("ascii", "replace")
            else:
                label = ""
            self._events.append((ev.type, ev.text_position, ev.length, ev.sample, label))
            i += 1
        return 0

    def synthesize(self, text: str, voice: Voice) -> Utterance:
        """Speak ``text`` (UTF-8) with ``voice``; returns the waveform at espeak's native rate."""
        text = text.strip()
        if not text:
            raise ValueError("Cannot synthesise empty text; pass at least one word.")
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise EspeakError(
                    f"espeak-ng has no voice '{voice.espeak_name}'; list voices with `espeak-ng --voices`."
                )
            self.lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate), 0)
            self.lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
            self.lib.espeak_SetParameter(_PARAM_RANGE, int(voice.pitch_range), 0)
            self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
            self.lib.espeak_SetParameter(_PARAM_WORDGAP, 0, 0)
            self._blocks, self._events = [], []
            encoded = text.encode("utf-8")
            err = self.lib.espeak_Synth(
                encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, CHARS_UTF8, None, None
            )
            if err != 0:
                raise EspeakError(f"espeak_Synth failed with code {err}.")
            self.lib.espeak_Synchronize()
            blocks, events = self._blocks, self._events
            self._blocks, self._events = [], []
        pcm = np.concatenate(blocks) if blocks else np.zeros(0, np.int16)
        samples = pcm.astype(np.float32) / 32768.0
        words, phonemes = _spans_from_events(text, events, len(samples), self.native_rate)
        return Utterance(samples=samples, sample_rate=self.native_rate, words=words, phonemes=phonemes)


def _spans_from_events(
    text: str, events: list[tuple[int, int, int, int, str]], total: int, rate: int
) -> tuple[tuple[TimedUnit, ...], tuple[TimedUnit, ...]]:
    """Turn espeak's point events into word and phoneme spans.

    A phoneme ends where the next phoneme or the end of the message starts. A word spans from its
    event to the end of its last non-pause phoneme.
    """
    boundaries = sorted(
        {s for t, _, _, s, _ in events if t in (_EVENT_PHONEME, _EVENT_END, _EVENT_MSG_TERMINATED)}
    )
    boundaries.append(total)

    def next_boundary(sample: int) -> int:
        for b in boundaries:
            if b > sample:
                return b
        return total

    phonemes: list[TimedUnit] = []
    word_marks: list[tuple[int, str]] = []  # (sample, word text)
    for etype, pos, length, sample, label in events:
        if etype == _EVENT_PHONEME:
            end = next_boundary(sample)
            if end > sample:
                phonemes.append(TimedUnit(label, sample / rate, end / rate))
        elif etype == _EVENT_WORD:
            word_marks.append((sample, text[max(pos - 1, 0) : max(pos - 1, 0) + length]))

    words: list[TimedUnit] = []
    for k, (sample, word) in enumerate(word_marks):
        start = sample / rate
        limit = word_marks[k + 1][0] / rate if k + 1 < len(word_marks) else total / rate
        spoken = [
            p for p in phonemes if start - 1e-6 <= p.start < limit - 1e-6 and p.label not in PAUSE_PHONEMES
        ]
        if not spoken:
            continue  # words espeak spoke as nothing (e.g. stray punctuation)
        words.append(TimedUnit(word, spoken[0].start, spoken[-1].end))
    return tuple(words), tuple(phonemes)


def send_message(fd: int, obj) -> None:
    """Write ``obj`` pickled, after its length, to the pipe ``fd``."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    os.write(fd, struct.pack("<Q", len(data)))
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def receive_message(fd: int):
    """The next object :func:`send_message` wrote to the pipe ``fd`` (EOFError once it is closed)."""
    header = _read_exact(fd, 8)
    if header is None:
        raise EOFError
    (size,) = struct.unpack("<Q", header)
    payload = _read_exact(fd, size)
    if payload is None:
        raise EOFError
    return pickle.loads(payload)


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        block = os.read(fd, min(left, 1 << 20))
        if not block:
            return None
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks)


def reply(work: Callable, *args) -> tuple[str, object]:
    """A helper's reply: ``("ok", work(*args))``, or ``("error", "Kind: message")`` when it raises."""
    try:
        return "ok", work(*args)
    except Exception as err:
        return "error", f"{type(err).__name__}: {err}"


def _serve(requests: int, responses: int, start: Callable, answer: Callable) -> None:
    """The child's side of :class:`HelperProcess`: ``("ready", value)`` (or ``("error", message)``, and
    stop) once, then one reply per request until the request pipe closes."""
    try:
        state, ready = start()
        send_message(responses, ("ready", ready))
    except Exception as err:  # report and stop: the parent raises it
        send_message(responses, ("error", f"{type(err).__name__}: {err}"))
        return
    while True:
        try:
            request = receive_message(requests)
        except EOFError:
            return
        send_message(responses, answer(state, request))


class HelperProcess:
    """A forked process that owns its own libespeak-ng and answers pickled requests over two pipes.

    In the child, ``start()`` returns the helper's state and the value it reports ready with; then
    ``answer(state, request)`` returns the reply (see :func:`reply`) to each request until the request
    pipe closes.
    """

    def __init__(
        self, start: Callable[[], tuple[Any, object]], answer: Callable[[Any, Any], tuple[str, object]]
    ) -> None:
        _find_library()  # fail here, with the install hint, if the library is missing
        req_read, req_write = os.pipe()
        resp_read, resp_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(req_write)
            os.close(resp_read)
            try:
                _serve(req_read, resp_write, start, answer)
            finally:
                os._exit(0)
        os.close(req_read)
        os.close(resp_write)
        self._pid, self._requests, self._responses = pid, req_write, resp_read
        self._lock = threading.Lock()
        status, value = receive_message(self._responses)
        if status != "ready":
            self.close()
            raise EspeakError(f"libespeak-ng failed to start ({value}); check the espeak-ng installation.")
        self.ready_value = value
        atexit.register(self.close)

    def _request(self, payload) -> tuple[str, object]:
        with self._lock:
            send_message(self._requests, payload)
            return receive_message(self._responses)

    def close(self) -> None:
        if self._pid is None:
            return
        try:
            os.close(self._requests)
            os.close(self._responses)
            os.waitpid(self._pid, 0)
        except OSError:
            pass
        self._pid = None


def _start_zygote() -> tuple[Espeak, int]:
    """The zygote's library, which never speaks itself; it reports ready with the native rate."""
    engine = Espeak()
    return engine, engine.native_rate


def _speak_in_fork(engine: Espeak, request: tuple[str, Voice]) -> tuple[str, object]:
    """Speak ``request`` (text, voice) in a fresh fork of this never-speaking process; returns its reply."""
    text, voice = request
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork: speak once from the pristine state, then leave
        os.close(read_end)
        send_message(write_end, reply(engine.synthesize, text, voice))
        os._exit(0)
    os.close(write_end)
    try:
        result = receive_message(read_end)
    except EOFError:
        result = ("error", "EspeakError: the synthesis process died")
    os.close(read_end)
    os.waitpid(pid, 0)
    return result


class IsolatedEspeak(HelperProcess):
    """libespeak-ng behind a zygote process, so every synthesis starts from the same state."""

    def __init__(self) -> None:
        super().__init__(_start_zygote, _speak_in_fork)
        self.native_rate = int(self.ready_value)

    def synthesize(self, text: str, voice: Voice) -> Utterance:
        """Speak ``text`` (UTF-8) with ``voice``; returns the waveform at espeak's native rate."""
        if not text.strip():
            raise ValueError("Cannot synthesise empty text; pass at least one word.")
        status, value = self._request((text, voice))
        if status != "ok":
            kind, _, message = value.partition(": ")
            raise (ValueError if kind == "ValueError" else EspeakError)(message)
        return value


_INSTANCE: Espeak | IsolatedEspeak | None = None
_INSTANCE_PID: int | None = None
START_LOCK = threading.Lock()  # one helper process starts at a time: a fork must not inherit its pipes


def get_espeak() -> Espeak | IsolatedEspeak:
    """The process's speech engine (created on first use): isolated per synthesis where the OS can
    fork, else the library in this process (then output may depend on what was spoken before)."""
    global _INSTANCE, _INSTANCE_PID
    with START_LOCK:
        if _INSTANCE is None or _INSTANCE_PID != os.getpid():
            if hasattr(os, "fork"):
                _INSTANCE = IsolatedEspeak()
            else:
                logger.warning("os.fork is unavailable: speech may vary with synthesis history")
                _INSTANCE = Espeak()
            _INSTANCE_PID = os.getpid()
        return _INSTANCE
