"""The real-time chunk loop: text (or speech) in, frames and PCM out, chunk by chunk.

    engine = Engine.from_config(cfg)                       # models, loaded once, shared by sessions
    with engine.session([engine.character()]) as session:
        session.push_text("Hello there, ", final=False)     # text as a chat model streams it
        session.push_text("how are you?", final=True)
        for chunk in session:                               # ends after the speech and a listening tail
            play(chunk.frames, chunk.audio)                 # uint8 [T, H, W, 3], float32 [N]
        print(session.stats.summary())

A producer thread plans each chunk (the orchestrator), denoises it (the denoiser, inside the session's
own window memory) and hands its latents to a decode worker, which turns them into frames and PCM
beside the next chunk's denoising (a thread on CPU; on CUDA the worker also runs on its own stream).
Finished chunks wait in a small queue, so memory stays bounded; a live session (``realtime=True``)
runs at most ``lookahead_chunks`` ahead of playback and never ends on its own.

Sessions share one :class:`Engine`; a lock gives the device to one chunk at a time, and each session
keeps its own K/V cache, decoder state and orchestrator, so any number of sessions can take turns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch
from torch.profiler import record_function

from streamchar.data.phonemes import SILENCE_ID
from streamchar.denoiser.dit import NULL_SPEAKING, Conditions
from streamchar.denoiser.flow import EulerSampler, Guidance, repeat_batch, set_reference_for_guidance
from streamchar.denoiser.residual import to_latents
from streamchar.denoiser.rollout import window_context
from streamchar.distill import read_distilled
from streamchar.engine.characters import Character, load_character
from streamchar.engine.clock import ChunkTiming, PlaybackClock, SessionStats
from streamchar.orchestrator.session import AudioConditions, Orchestrator, VoicePrompt

logger = logging.getLogger(__name__)
MODES = ("text", "audio")
_CLOSING = threading.Lock()  # makes close()'s check-and-set atomic


class SessionClosed(RuntimeError):
    """The session was closed (or failed); start a new one."""


@dataclass(frozen=True)
class Chunk:
    """One finished chunk: what a player shows and plays for ``timing.duration`` seconds.

    ``frames`` uint8 ``[T, H, W, 3]`` (characters side by side), ``audio`` float32 ``[N]`` mono at the
    timeline's rate (``N = T * samples_per_video_frame``), ``speaker`` ``[T]`` whose turn each frame is
    (-1 while listening), ``speaking`` ``[T]`` bool.
    """

    index: int
    frames: np.ndarray
    audio: np.ndarray
    speaker: np.ndarray
    speaking: np.ndarray
    timing: ChunkTiming
    conditions: AudioConditions | None = None

    @property
    def listening(self) -> bool:
        return not bool(self.speaking.any())


class Engine:
    """What every session shares: denoiser, codecs, the orchestrator's LM, the device and its lock."""

    def __init__(self, cfg, denoiser, video_codec, audio_codec, unit_lm=None, vocab=None,
                 device: torch.device | None = None, precision: str = "no") -> None:  # fmt: skip
        self.cfg = cfg
        self.timeline = denoiser.timeline
        self.denoiser = denoiser
        self.video_codec = video_codec
        self.audio_codec = audio_codec
        self.unit_lm = unit_lm
        self.vocab = vocab
        self.device = device or torch.device("cpu")
        self.precision = precision
        self.distilled: dict | None = None  # a distilled student's record: its steps, shift, folded guidance
        self._free_caches: list = []  # closed sessions' context caches, reused by new ones
        self.decoder_factory = None  # (characters, audio_context_tokens) -> ChunkDecoder; None: local
        self.fast_path: dict[str, str | bool] = {}  # what apply_fast_path put into effect
        self.phoneme_reader = None  # reads phonemes from generated audio latents (pointer realignment)
        self.priors = None  # the priors a residual denoiser refines (or, with engine.refine off, plays alone)
        self.lock = threading.Lock()  # one chunk at a time on the device
        self.sessions = 0  # open sessions
        self._count_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg, denoiser_path: str | None = None, with_orchestrator: bool = True) -> Engine:
        from streamchar.codecs.audio import build_audio_codec
        from streamchar.codecs.video import video_codec_from_config
        from streamchar.config import resolve_asset_path
        from streamchar.denoiser.build import latent_spec_from_config
        from streamchar.orchestrator.model import load_unit_lm
        from streamchar.training import resolve_mixed_precision
        from streamchar.training.teacher import load_teacher

        ecfg = cfg.engine
        device = _engine_device(ecfg.device)
        denoiser = load_teacher(denoiser_path or ecfg.denoiser_path, cfg, latent_spec_from_config(cfg)).to(
            device
        )
        video_codec = video_codec_from_config(cfg).to(device)
        audio_codec = build_audio_codec(cfg, cfg.timeline).to(device)
        distilled = read_distilled(denoiser_path or ecfg.denoiser_path)
        if distilled is not None:
            logger.info("a %d-step distilled student (guidance folded in)", distilled["steps"])
        unit_lm = vocab = None
        if with_orchestrator:
            if cfg.orchestrator.backend != "hf":
                raise ValueError("The engine runs the orchestrator in process; set orchestrator.backend=hf.")
            unit_lm, vocab, _ = load_unit_lm(resolve_asset_path(cfg.orchestrator.path), device=device)
        engine = cls(cfg, denoiser, video_codec, audio_codec, unit_lm, vocab, device,
                     resolve_mixed_precision(ecfg.mixed_precision))  # fmt: skip
        engine.distilled = distilled
        if denoiser.residual or not ecfg.refine:
            from streamchar.loaders import load_priors

            engine.priors = load_priors(cfg, device)
        engine.apply_fast_path()
        if with_orchestrator and ecfg.realign:
            engine.phoneme_reader = _phoneme_reader(cfg, audio_codec)
        return engine

    @classmethod
    def random_init(cls, cfg, seed: int = 0) -> Engine:
        """Every component randomly initialised from the config's sizes (no checkpoint): for timing a preset
        whose weights you do not have, such as ``base`` (``streamchar bench stream --random-init``). The
        denoiser stands for a distilled student (guidance folded in: one branch, ``engine.steps`` steps); the
        pointer is not realigned. The character is the configured one, resized to the preset's images."""
        from streamchar.codecs.audio import build_audio_codec
        from streamchar.codecs.video import video_codec_from_config
        from streamchar.denoiser.build import build_denoiser, latent_spec_from_config
        from streamchar.orchestrator.model import build_unit_lm
        from streamchar.orchestrator.text import UnitVocabulary
        from streamchar.training import resolve_mixed_precision

        ecfg = cfg.engine
        device = _engine_device(ecfg.device)
        torch.manual_seed(seed)
        with torch.device(device):  # initialised in place: a 1.3B model never passes through host memory
            denoiser = build_denoiser(cfg.denoiser, cfg.timeline, latent_spec_from_config(cfg)).eval()
            video_codec = video_codec_from_config(cfg, random_init=True)
            vocab = UnitVocabulary()
            unit_lm = build_unit_lm(cfg.orchestrator, vocab).eval()
        audio_codec = build_audio_codec(cfg, cfg.timeline).to(device)
        engine = cls(cfg, denoiser, video_codec, audio_codec, unit_lm, vocab, device,
                     resolve_mixed_precision(ecfg.mixed_precision))  # fmt: skip
        engine.distilled = {"steps": ecfg.steps, "shift": ecfg.shift, "random_init": True}
        if denoiser.residual:
            from streamchar.denoiser.build import acoustic_prior_kwargs, video_prior_kwargs
            from streamchar.denoiser.prior import AcousticPrior, Priors, VideoPrior

            spec = latent_spec_from_config(cfg)
            with torch.device(device):
                engine.priors = Priors(AcousticPrior(**acoustic_prior_kwargs(cfg.prior.audio, cfg.timeline, spec)),
                                       VideoPrior(**video_prior_kwargs(cfg.prior.video, cfg.timeline, spec)))  # fmt: skip
        engine.apply_fast_path()
        return engine

    def apply_fast_path(self) -> dict[str, str | bool]:
        """Put ``cfg.engine``'s fast-path switches into effect on the loaded models (call again after changing
        them, as the benchmark does between rows); returns what is in effect. Weights are cast in place:
        back to fp32 after bf16 they keep the bf16-rounded values."""
        from streamchar.config import resolve_switch
        from streamchar.denoiser.attention import flash_available
        from streamchar.orchestrator.session import hf_backend_options

        ecfg, cuda = self.cfg.engine, self.device.type == "cuda"
        weights = ecfg.weights if ecfg.weights != "auto" else ("bf16" if self.precision == "bf16" else "fp32")
        if weights not in ("fp32", "bf16"):
            raise ValueError(f"engine.weights must be auto, fp32 or bf16, got '{ecfg.weights}'.")
        if weights == "bf16" and self.precision != "bf16":
            raise ValueError("engine.weights=bf16 needs engine.mixed_precision=bf16 (float32 latents meet bf16 "
                             "weights through autocast); set both, or weights=fp32.")  # fmt: skip
        dtype = torch.bfloat16 if weights == "bf16" else torch.float32
        self.denoiser.to(dtype)
        lm_dtype = dtype if cuda else torch.float32  # see engine.weights
        if self.unit_lm is not None:
            self.unit_lm.to(lm_dtype)
        from streamchar.denoiser.attention import BACKENDS

        attention = ecfg.attention
        if attention == "auto":
            attention = "flash" if flash_available() else self.cfg.denoiser.attention
        if attention not in BACKENDS:
            raise ValueError(
                f"engine.attention must be auto or one of {', '.join(BACKENDS)}, got '{attention}'."
            )
        self.denoiser.set_attention_backend(attention)
        compile_on = resolve_switch(ecfg.compile, "engine.compile", cuda)
        mode = ("reduce-overhead" if cuda and ecfg.cuda_graphs else "default") if compile_on else None
        if mode != self.denoiser._compiled_mode:
            self.denoiser.compile_step(mode)
        orchestrator = {"orchestrator_weights": "bf16" if lm_dtype == torch.bfloat16 else "fp32",
                        "orchestrator_kv_cache": self.cfg.orchestrator.kv_cache,
                        "orchestrator_static_cache": hf_backend_options(self.cfg, self.device)["static"]}  # fmt: skip
        self.fast_path = {"precision": self.precision, "weights": weights, "attention": attention,
                          "compile": mode or "off", "context_cache": ecfg.context_cache,
                          "pinned_memory": ecfg.pinned_memory and cuda} | orchestrator  # fmt: skip
        logger.info("fast path: %s", self.fast_path)
        return self.fast_path

    # -- pieces a session is made of ---------------------------------------------------------------
    def character(self, name: str | None = None) -> Character:
        ecfg = self.cfg.engine
        return load_character(name or ecfg.character, ecfg.characters_dir, self.video_codec.image_size,
                              self.timeline.sample_rate)  # fmt: skip

    def sampler(self, steps: int | None = None, audio_driven: bool = False) -> EulerSampler:
        """The chunk sampler: ``steps`` (default: a student's own step count, else ``engine.steps``) on the
        engine's guidance; a distilled student has its guidance folded in and runs one branch."""
        ecfg = self.cfg.engine
        if self.distilled is not None:
            return EulerSampler(
                steps=steps or int(self.distilled["steps"]), shift=float(self.distilled["shift"])
            )
        guidance = Guidance(
            1.0 if audio_driven else ecfg.guidance_conditions,  # the conditions are null when driven by audio
            ecfg.guidance_ref_image,
            1.0 if audio_driven else ecfg.guidance_ref_voice,  # the voice is given, not generated
        )
        return EulerSampler(steps=steps or ecfg.steps, shift=ecfg.shift, guidance=guidance)

    def orchestrator(self, characters: list[Character]) -> Orchestrator:
        """A new orchestrator (own backend and KV cache) over the shared LM, voiced by the characters'
        prompts; with two characters each keeps fewer prompt turns until they fit half the LM context."""
        if self.unit_lm is None:
            raise ValueError("This engine was built without an orchestrator; text needs one.")
        keep = max((len(c.prompt_turns) for c in characters), default=0)
        while True:
            prompts = {
                i: VoicePrompt(c.prompt_turns[:keep])
                for i, c in enumerate(characters)
                if c.prompt_turns[:keep]
            }
            try:
                return Orchestrator.from_config(
                    self.cfg, voice_prompts=prompts, loaded=(self.unit_lm, self.vocab)
                )
            except ValueError:
                if keep <= 1:
                    raise
                keep -= 1

    def chunk_decoder(self, characters: int, audio_context_tokens: int | None, side_stream: bool = False):
        """A session's decoders (:class:`~streamchar.engine.decode.ChunkDecoder`): here, on the engine's
        device, unless ``decoder_factory`` puts them elsewhere (another GPU, :mod:`streamchar.engine.disagg`)."""
        if self.decoder_factory is not None:
            return self.decoder_factory(characters, audio_context_tokens)
        from streamchar.engine.decode import LocalDecoder

        return LocalDecoder(
            self, characters, audio_context_tokens, side_stream, self.cfg.engine.pinned_memory
        )

    def take_cache(self):
        """A context cache for a new session: a closed session's, reset, when one is free (the same buffers
        at the same addresses, so a CUDA graph of the step recorded for it replays without recording)."""
        with self._count_lock:
            if self._free_caches:
                return self._free_caches.pop()
        return self.denoiser.static_cache()

    def give_cache(self, cache) -> None:
        """Take a closed session's cache back for the next session (at most a few are kept)."""
        if cache is None:
            return
        cache.reset()
        with self._count_lock:
            if len(self._free_caches) < 4:
                self._free_caches.append(cache)

    def session(self, characters: list[Character] | None = None, **kwargs) -> StreamSession:
        return StreamSession(self, characters or [self.character()], **kwargs)

    def autocast(self):
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16")


def _engine_device(name: str) -> torch.device:
    """``engine.device``: ``auto`` is CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _phoneme_reader(cfg, audio_codec):
    """The recognizer that realigns the pointer (``engine.phoneme_reader``), or None with a warning."""
    from streamchar.config import resolve_asset_path
    from streamchar.eval.recognizer import LatentPhonemeReader, load_recognizer

    folder = resolve_asset_path(cfg.engine.phoneme_reader)
    if not (folder / "config.json").is_file():
        logger.warning("no recognizer at engine.phoneme_reader=%s; the pointer is not realigned (train one "
                       "with `streamchar eval train recognizer`, or set engine.realign=false)", folder)  # fmt: skip
        return None
    reader = LatentPhonemeReader(load_recognizer(folder), audio_codec)
    tokens = cfg.timeline.chunk_audio_tokens
    reader.wave_log_probs(
        np.zeros(cfg.timeline.audio_tokens_to_samples(tokens), np.float32), tokens
    )  # warm-up
    return reader


class StreamSession:
    """One conversation: one character (or two, side by side, for a dialogue), one window memory.

    Args:
        engine: the shared models.
        characters: one, or two for a dialogue (``push_text(..., speaker=1)`` speaks as the second).
        mode: ``text`` (text -> speech + video) or ``audio`` (given speech -> video, ``push_audio``).
        steps: denoising steps per chunk (default ``engine.steps``).
        realtime: pace chunks to playback (live); otherwise produce as fast as possible and end after
            everything pushed was spoken plus ``tail_seconds`` of listening.
        decode_overlap: decode beside the next chunk's denoising (default ``engine.decode_overlap``).
    """

    def __init__(self, engine: Engine, characters: list[Character], mode: str = "text", steps: int | None = None,
                 realtime: bool = False, decode_overlap: bool | None = None, seed: int | None = None,
                 tail_seconds: float | None = None, lookahead_chunks: int | None = None) -> None:  # fmt: skip
        ecfg = engine.cfg.engine
        if mode not in MODES:
            raise ValueError(
                f"Unknown mode '{mode}'; use text (text -> speech + video) or audio (speech -> video)."
            )
        if not 1 <= len(characters) <= 2:
            raise ValueError(f"A session plays one or two characters, got {len(characters)}.")
        if mode == "audio" and len(characters) != 1:
            raise ValueError("Audio-driven sessions play one character.")
        self.engine, self.tl, self.mode = engine, engine.timeline, mode
        self.characters = list(characters)
        self.realtime = realtime
        self.overlap = ecfg.decode_overlap if decode_overlap is None else decode_overlap
        self.tail_seconds = ecfg.tail_seconds if tail_seconds is None else tail_seconds
        self.lookahead = ecfg.lookahead_chunks if lookahead_chunks is None else lookahead_chunks
        self.sampler = engine.sampler(steps, audio_driven=mode == "audio")
        self.use_sink, self.use_motion = ecfg.sink, ecfg.motion_frames
        self.context_cache = ecfg.context_cache
        self._reader = engine.phoneme_reader if mode == "text" else None
        self._progress: deque[tuple[int, torch.Tensor]] = deque()  # (chunk, phoneme log-probs) to realign on
        self._planned: dict[int, tuple[int, bool]] = {}  # chunk -> (frames the turn committed, a turn ended)
        self.orchestrator = engine.orchestrator(self.characters) if mode == "text" else None
        self.stats = SessionStats()
        self.clock = PlaybackClock()
        self.generator = torch.Generator().manual_seed(ecfg.seed if seed is None else seed)
        self.speech_end: float | None = None  # media time the last finished turn ended
        self._lock = threading.RLock()  # input (text, audio, interrupt) against planning
        self._audio_ready = threading.Condition(self._lock)
        self._marks: deque[tuple[int, float]] = deque(maxlen=1024)  # (first word of a push, push wall time)
        self._audio_in = np.zeros(0, np.float32)
        self._audio_final = False
        self._audio_context = np.zeros(0, np.float32)
        self._out: queue.Queue = queue.Queue(maxsize=max(2, self.lookahead + 1))
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._index = 0
        self._media = 0.0  # media time of the next chunk
        self._state_bytes = 0
        self._setup_state()
        with engine._count_lock:
            engine.sessions += 1
        self._counted = True

    # -- state -------------------------------------------------------------------------------------
    def _setup_state(self) -> None:
        eng, tl = self.engine, self.tl
        device = eng.device
        images = np.stack([c.image for c in self.characters])
        with eng.lock, torch.no_grad(), eng.autocast():
            ref_video = (
                eng.video_codec.encode(images).float().permute(1, 0, 2, 3)[:, :, None]
            )  # [B, C, 1, h, w]
        R, spt = tl.reference_voice_tokens, tl.samples_per_audio_token
        voices = torch.zeros(len(self.characters), R, eng.audio_codec.latent_dim, device=device)
        valid = torch.zeros(len(self.characters), R, dtype=torch.bool, device=device)
        for i, c in enumerate(self.characters):
            if c.voice is not None and len(c.voice) >= spt:
                lat = eng.audio_codec.encode(c.voice[: R * spt]).to(device)
                voices[i, : len(lat)], valid[i, : len(lat)] = lat, True
        # the fixed-layout cache: the step reads the same buffers from the first chunk to the last (what a
        # compiled step and its CUDA graph need); without the context cache the window is recomputed
        self._cache = eng.take_cache()
        self._references = (ref_video.to(device), voices, valid)
        # the acoustic prior's context: the units and speaking flags before the chunk (padding at the start)
        self.refine = eng.cfg.engine.refine
        self._use_priors = eng.priors is not None and (eng.denoiser.residual or not self.refine)
        if self._use_priors:
            context = eng.priors.context
            self._unit_context = (torch.full((len(self.characters), context), -1, dtype=torch.long, device=device),
                                  torch.zeros(len(self.characters), context, dtype=torch.long, device=device))  # fmt: skip
        if self.context_cache:
            with eng.lock, eng.denoiser.streaming(self._cache), eng.autocast():
                set_reference_for_guidance(eng.denoiser, self.sampler.guidance, *self._references)
        self._sink_set = False
        self._sink: tuple[torch.Tensor, torch.Tensor] | None = None  # the sink chunk's latents
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None  # last chunk's latents
        context = eng.cfg.engine.audio_context_tokens if self.mode == "text" else None
        self._chunk_decoder = eng.chunk_decoder(len(self.characters), context, side_stream=self.overlap)
        self._decoder = _Worker("streamchar-decode") if self.overlap else None
        self._cuda_events = device.type == "cuda" and self.overlap

    def state_nbytes(self) -> dict[str, int]:
        """Bytes of the per-session tensors (constant once the sink is set, whatever the session length)."""
        cache = self._cache.nbytes() if self._cache is not None else 0
        previous = sum(t.numel() * t.element_size() for t in self._previous) if self._previous else 0
        return {"kv_cache": cache, "motion_latents": previous, "audio_input": self._audio_in.nbytes,
                "orchestrator_context": len(self.orchestrator.backend) if self.orchestrator else 0}  # fmt: skip

    # -- input ---------------------------------------------------------------------------------------
    def push_text(self, text: str, final: bool = False, speaker: int = 0) -> None:
        """Transcript for ``speaker`` (0, or 1 in a dialogue); ``final`` closes the turn. Errors (see
        :meth:`Orchestrator.push_text`) leave the session as it was."""
        self._check_open()
        if self.orchestrator is None:
            raise ValueError("This session is driven by audio; use push_audio, or open a text session.")
        if speaker >= len(self.characters):
            raise ValueError(
                f"speaker {speaker} is not in this session of {len(self.characters)} character(s)."
            )
        with self._lock:
            first_word = self.orchestrator.words_pushed
            self.orchestrator.push_text(text, final=final, speaker=speaker)
            now = time.perf_counter()
            if self.stats.first_push is None:
                self.stats.first_push = now
            if text.strip():
                self._marks.append((first_word, now))

    def push_audio(self, samples: np.ndarray, final: bool = False) -> None:
        """Speech (mono float32 at the timeline's rate) that drives the character (audio mode)."""
        self._check_open()
        if self.mode != "audio":
            raise ValueError("This session speaks text; open one with mode='audio' to drive it with speech.")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise ValueError("The audio holds NaN or infinite samples; send PCM floats in [-1, 1].")
        with self._audio_ready:
            if self.stats.first_push is None:
                self.stats.first_push = time.perf_counter()
            limit = 60 * self.tl.sample_rate  # at most a minute waits; older input is dropped
            self._audio_in = np.concatenate([self._audio_in, samples])[-limit:]
            self._audio_final = self._audio_final or final
            self._audio_ready.notify_all()

    def interrupt(self) -> None:
        """Stop speaking: the next chunk planned is listening; later text speaks again."""
        self._check_open()
        with self._audio_ready:
            if self.orchestrator is not None:
                self.orchestrator.interrupt()
            self._audio_in = np.zeros(0, np.float32)
            self._marks.clear()
            self.stats.interrupts += 1

    # -- output --------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Chunk]:
        while True:
            chunk = self.next_chunk()
            if chunk is None:
                return
            yield chunk

    def next_chunk(self, timeout: float | None = None) -> Chunk | None:
        """The next finished chunk (blocking); None when an offline session has ended."""
        self._check_open()
        self._start()
        waited, out = 0.0, self._out
        while True:
            try:
                item = out.get(timeout=0.1)
                break
            except queue.Empty:
                waited += 0.1
                if self._closed:
                    raise SessionClosed("This session was closed while waiting for a chunk.") from None
                if timeout is not None and waited >= timeout:
                    raise TimeoutError(f"No chunk within {timeout} s.") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def _start(self) -> None:
        if self._producer is None:
            self._producer = threading.Thread(target=self._produce, name="streamchar-session", daemon=True)
            self._producer.start()

    # -- the loop -------------------------------------------------------------------------------------
    def _produce(self) -> None:
        pending: Future | None = None  # the previous chunk's decode (at most one in flight)
        try:
            while not self._stop.is_set() and not self._finished():
                if self.realtime:
                    self._pace()
                busy = time.perf_counter()
                work = self._denoise_next()
                if work is None:
                    break
                if pending is not None:
                    pending.result()
                if self._stop.is_set():
                    break
                if self._decoder is not None:
                    pending = self._decoder.submit(self._decode_and_emit, *work)
                else:
                    self._decode_and_emit(*work)
                self.stats.busy_seconds += time.perf_counter() - busy
            if pending is not None:
                pending.result()
            self._put(None)
        except BaseException as err:  # handed to the consumer, which closes the session
            if self._stop.is_set():
                return  # closed while a chunk was under way: nothing to report
            if pending is not None:  # the chunk before the failure still reaches the consumer
                try:
                    pending.result()
                except BaseException:
                    pass
            if not isinstance(err, SessionClosed):
                logger.exception("session failed")
            self._put(err)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _finished(self) -> bool:
        if self.realtime:
            return False
        with self._lock:
            if self.mode == "text":
                idle = self.orchestrator.idle
            else:
                idle = self._audio_final and len(self._audio_in) == 0
        if not idle:
            return False
        end = self.speech_end if self.speech_end is not None else 0.0
        return self._media >= end + self.tail_seconds - 1e-9 and self._index > 0

    def _pace(self) -> None:
        """Live: wait until playback is within ``lookahead`` chunks of the next chunk."""
        while self.clock.started and not self._stop.is_set():
            ahead = self._media - self.clock.media_now()
            if ahead <= self.lookahead * self.tl.chunk_seconds:
                return
            time.sleep(min(ahead - self.lookahead * self.tl.chunk_seconds, 0.05))

    def _plan(self) -> tuple[Conditions, AudioConditions | None, torch.Tensor | None, np.ndarray | None]:
        """This chunk's conditions ``[B, L_a]``, and the orchestrator's plan (text) or the given speech as
        latents ``[1, L_a, D_a]`` and samples (audio)."""
        tl, eng = self.tl, self.engine
        L_a, B = tl.chunk_audio_tokens, len(self.characters)
        # a causal codec's first chunk plays fewer frames than a chunk's audio tokens span: plan (and take
        # input for) only what plays, and fill the rest with silence
        playing = min(L_a, tl.video_frames_to_audio_tokens(tl.chunk_video_frames(self._index)))
        if self.mode == "text":
            with self._lock, eng.lock, record_function("streamchar.plan"):
                self._realign()
                plan = self.orchestrator.next_chunk(playing)
                self._planned[self._index] = (
                    int(self._committed_rows(plan, playing).sum()),
                    bool(plan.turn_ends),
                )
            if playing < L_a:
                plan = _padded(plan, L_a)
            silence = SILENCE_ID * self.orchestrator.vocab.buckets.size
            mine = torch.stack([plan.speaker == b for b in range(B)])  # [B, L_a]
            units = torch.where(mine, plan.units[None], torch.full_like(mine, silence, dtype=torch.long))
            speaking = (mine & plan.speaking[None]).long()
            if plan.turn_ends:
                self.speech_end = self._media + tl.audio_tokens_to_seconds(max(plan.turn_ends) + 1)
            return Conditions(units, speaking), plan, None, None
        samples = tl.audio_tokens_to_samples(playing)
        # offline: wait for the whole chunk; live: wait at most one chunk's time for speech that is on its
        # way (a microphone sends blocks), then go on with what arrived and silence for the rest
        give_up = time.perf_counter() + tl.chunk_seconds
        with self._audio_ready:
            while len(self._audio_in) < samples and not self._audio_final:
                if self._stop.is_set():
                    raise SessionClosed("The session was closed.")
                if self.realtime and time.perf_counter() >= give_up:
                    break
                self._audio_ready.wait(0.02)
            if self.realtime and len(self._audio_in) > 3 * samples:  # fell behind: keep the newest speech
                self._audio_in = self._audio_in[len(self._audio_in) - 2 * samples :]
            piece, self._audio_in = self._audio_in[:samples], self._audio_in[samples:]
            if len(piece) and not len(self._audio_in) and self._audio_final:
                self.speech_end = self._media + len(piece) / tl.sample_rate
        piece = np.concatenate([piece, np.zeros(tl.audio_tokens_to_samples(L_a) - len(piece), np.float32)])
        context = self._audio_context
        wave = np.concatenate([context, piece])
        lat = eng.audio_codec.encode(wave)[len(context) // tl.samples_per_audio_token :]
        self._audio_context = wave[-2 * tl.samples_per_audio_token :]
        null = Conditions(torch.full((1, L_a), eng.denoiser.num_units), torch.full((1, L_a), NULL_SPEAKING))
        return null, None, lat[None].float(), piece

    @torch.no_grad()
    def _denoise_next(self):
        eng, tl = self.engine, self.tl
        device, model = eng.device, eng.denoiser
        started = time.perf_counter()
        cond, plan, given, given_wave = self._plan()
        if self._stop.is_set():
            return None
        B, n = len(self.characters), self.sampler.guidance.num_branches
        L, S, M = tl.chunk_latent_frames, tl.sink_latent_frames, tl.motion_latent_frames
        S_a, M_a = tl.sink_audio_tokens, tl.motion_audio_tokens
        noise_video = torch.randn(B, model.latent_channels, L, model.latent_size, model.latent_size,
                                  generator=self.generator).to(device)  # fmt: skip
        noise_audio = torch.randn(B, tl.chunk_audio_tokens, model.audio_dim, generator=self.generator).to(
            device
        )
        cond = Conditions(cond.units.to(device), cond.speaking.to(device))
        given_latents = given.to(device) if given is not None else None
        mu_video = mu_audio = None
        if self._use_priors:
            with record_function("streamchar.priors"), eng.lock, eng.autocast():
                mu_video, mu_audio = self._prior_means(cond, given_latents)
            cond = Conditions(cond.units, cond.speaking, mu_audio, mu_video)
        context = None
        with eng.lock, model.streaming(self._cache), eng.autocast():
            with record_function("streamchar.context_update"):
                if self._previous is not None:
                    video, audio = self._previous
                    if not self._sink_set and self.use_sink:
                        self._sink = (video[:, :, :S], audio[:, :S_a])
                        if self.context_cache:
                            model.set_sink(repeat_batch(self._sink[0], n), repeat_batch(self._sink[1], n))
                    self._sink_set = True
                    if self.use_motion and self.context_cache:
                        model.set_motion(repeat_batch(video[:, :, -M:], n), repeat_batch(audio[:, -M_a:], n))
                if not self.context_cache:  # the ablation: the whole window at every step
                    motion = (self._previous[0][:, :, -M:], self._previous[1][:, -M_a:]) if (
                        self._previous is not None and self.use_motion) else None  # fmt: skip
                    context = window_context(*self._references, self._sink, motion, tl)
            given_audio = given_latents
            if given_audio is not None and model.residual:
                given_audio = torch.zeros_like(
                    given_audio
                )  # a given chunk is its own mean: its residual is 0
            timer = _DeviceTimer(device)
            with record_function("streamchar.sample"):
                if self._use_priors and not self.refine:  # the ablation: the priors' means alone
                    video, audio = mu_video, mu_audio
                else:
                    video, audio = self.sampler.sample(
                        model, noise_video, noise_audio, cond, context, given_audio=given_audio
                    )
                    video, audio = to_latents(model, video.float(), audio.float(), mu_video, mu_audio)
            timer.stop()
            if given_latents is not None:
                audio = given_latents
            video, audio = video.float(), audio.float()
        self._previous = (video, audio)
        event = None
        if self._cuda_events:
            event = torch.cuda.Event()
            event.record()
        denoised = time.perf_counter()
        index, media = self._index, self._media
        self._index += 1
        duration = tl.video_frames_to_seconds(tl.chunk_video_frames(index))
        self._media += duration
        return index, media, duration, started, denoised, video, audio, plan, given_wave, event, timer

    def _prior_means(self, cond: Conditions, given: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's prior means ``(video [B, C, L, h, w], audio [B, L_a, D_a])``: the acoustic prior over
        the planned units after the session's unit context (or the given speech itself), then the video prior
        from the reference, the last motion latent (the reference at the start, or without motion frames)
        and the motion audio."""
        priors, tl = self.engine.priors, self.tl
        ref_video, voices, valid = self._references
        if given is None:
            context_units, context_speaking = self._unit_context
            units = torch.cat([context_units, cond.units], dim=1)
            speaking = torch.cat([context_speaking, cond.speaking], dim=1)
            mu_audio = priors.audio_means(units, speaking, voices, valid)
            self._unit_context = (units[:, -priors.context :], speaking[:, -priors.context :])
        else:
            mu_audio = given.float()
        reference = ref_video[:, :, 0].float()
        if self._previous is not None and self.use_motion:
            last, motion_audio = self._previous[0][:, :, -1], self._previous[1][:, -tl.motion_audio_tokens :]
        else:
            last = reference
            motion_audio = torch.zeros(reference.shape[0], tl.motion_audio_tokens, mu_audio.shape[-1],
                                       device=reference.device)  # fmt: skip
        return priors.video_means(reference, last, motion_audio, mu_audio), mu_audio

    def _read_progress(self, index: int, plan: AudioConditions | None, wave: np.ndarray) -> None:
        """Decode worker: read the phonemes of chunk ``index``'s speech for the next realignment; only the
        frames the current turn committed (not held, after any turn that ended in the chunk) are kept."""
        if plan is None or self._reader is None or not bool(plan.speaking.any()):
            return
        tokens = min(len(plan.units), self.tl.video_frames_to_audio_tokens(self.tl.chunk_video_frames(index)))
        log_probs = self._reader.wave_log_probs(wave[: self.tl.audio_tokens_to_samples(tokens)], tokens)
        with self._lock:
            self._progress.append((index, log_probs[self._committed_rows(plan, tokens)]))

    @staticmethod
    def _committed_rows(plan: AudioConditions, tokens: int) -> torch.Tensor:
        """Rows of the chunk's first ``tokens`` frames that the current turn committed to its pointer."""
        keep = ~plan.held[:tokens]
        if plan.turn_ends:
            keep[: max(plan.turn_ends) + 1] = False
        return keep

    def _realign(self) -> None:
        """Producer, before planning chunk ``j``: move the pointer to where chunk ``j - 2``'s speech got (the
        newest chunk whose decode has surely finished with decode overlap on, so the result never depends on
        thread timing, and is the same with overlap off). The frames chunk ``j - 1`` committed since are
        ``behind`` it; a turn that ended since makes the reading stale."""
        while self._progress and self._progress[0][0] <= self._index - 2:
            index, log_probs = self._progress.popleft()
            later = [self._planned.get(i, (0, True)) for i in range(index + 1, self._index)]
            if len(log_probs) and not any(ended for _, ended in later):
                behind = sum(committed for committed, _ in later)
                self.stats.realign_lag.append(self.orchestrator.realign(log_probs, behind=behind))
        for old in [i for i in self._planned if i < self._index - 2]:  # bounded however long the session
            del self._planned[old]

    @torch.no_grad()
    def _decode_and_emit(
        self, index, media, duration, started, denoised, video, audio, plan, given, event, timer
    ) -> None:
        tl = self.tl
        frames, wave = self._chunk_decoder.decode(video, audio if given is None else None, event)
        self.stats.sample_seconds.append(timer.seconds())  # the decode waited for the sampling to finish
        if given is not None:  # audio-driven: play the given speech itself
            wave = given
        frames_n = tl.chunk_video_frames(index)
        frames, wave = frames[:frames_n], wave[: tl.video_frames_to_samples(frames_n)]
        if given is None:
            self._read_progress(index, plan, wave)
        ready = time.perf_counter()
        deadline, missed = self.clock.schedule(media, ready)
        timing = ChunkTiming(index, media, duration, started, denoised, ready, deadline, missed)
        speaker, speaking = self._per_frame(plan, frames_n)
        self._emit(Chunk(index, frames, wave, speaker, speaking, timing, plan))

    def _per_frame(self, plan, frames: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.minimum(
            self.tl.video_frames_to_audio_tokens(np.arange(frames)), self.tl.chunk_audio_tokens - 1
        )
        if plan is not None:
            return plan.speaker.numpy()[tokens], plan.speaking.numpy()[tokens]
        return np.zeros(frames, np.int64), np.ones(frames, bool)

    def _emit(self, chunk: Chunk) -> None:
        self.stats.add_chunk(chunk.timing)
        if chunk.conditions is not None and chunk.conditions.word is not None:
            self._resolve_marks(chunk)
        self._put(chunk)

    def _resolve_marks(self, chunk: Chunk) -> None:
        words = chunk.conditions.word.numpy()
        with self._lock:
            while self._marks:
                first, pushed = self._marks[0]
                hits = np.nonzero(words >= first)[0]
                if not len(hits):
                    break
                played = self.clock.wall_of(
                    chunk.timing.media_start + self.tl.audio_tokens_to_seconds(int(hits[0]))
                )
                self.stats.tts_latency.append(played - pushed)
                self._marks.popleft()

    # -- shutdown -----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed("This session is closed; open a new one.")

    def close(self) -> None:
        """Stop the loop and free everything the session holds (K/V cache, decoders, orchestrator)."""
        with _CLOSING:
            if self._closed or not hasattr(self, "_counted"):
                self._closed = True
                return
            self._closed = True
        self._stop.set()
        with self._audio_ready:
            self._audio_ready.notify_all()
        if self._producer is not None and self._producer is not threading.current_thread():
            while self._producer.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._out.get_nowait()
                except queue.Empty:
                    pass
                self._producer.join(timeout=0.05)
        if self._decoder is not None:
            self._decoder.shutdown()
        self.engine.give_cache(self._cache)
        self._cache = None
        self._references = self._sink = None
        self._previous = None
        self._chunk_decoder.close()
        self.orchestrator = None
        self._audio_in = self._audio_context = np.zeros(0, np.float32)
        self._out = queue.Queue(maxsize=1)
        with self.engine._count_lock:
            self.engine.sessions -= 1

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _padded(plan: AudioConditions, frames: int) -> AudioConditions:
    """``plan`` extended to ``frames`` frames of listening (silence, pointer held)."""
    pad = frames - len(plan.units)

    def extend(x, value):
        return torch.cat([x, torch.full((pad,), value, dtype=x.dtype)])

    return AudioConditions(
        units=extend(plan.units, 0), pointer=extend(plan.pointer, int(plan.pointer[-1])),
        speaking=extend(plan.speaking, False), speaker=extend(plan.speaker, -1), held=extend(plan.held, False),
        turn_ends=plan.turn_ends, done=plan.done, word=extend(plan.word, -1) if plan.word is not None else None,
    )  # fmt: skip


class _DeviceTimer:
    """Device time of the work queued between its creation and :meth:`stop`: CUDA events on a GPU (read
    without a synchronisation once the work is known to be done), the wall clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start, self.end = time.perf_counter(), None

    def stop(self) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.end = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000
        return self.end - self.start


class _Worker:
    """One daemon thread running submitted calls in order (a daemon, so a session nobody closed never
    holds up the interpreter's exit the way a ``ThreadPoolExecutor`` worker would)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:
                future.set_exception(err)

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Cancel what has not started, let the running call finish (it sees the session's stop flag)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
