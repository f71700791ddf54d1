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

Sessions share one :class:`~streamchar.engine.engine.Engine`; a lock gives the device to one chunk at a time,
and each session keeps its own K/V cache, decoder state and orchestrator, so any number of sessions can take
turns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.profiler import record_function

from streamchar.data.phonemes import SILENCE_ID
from streamchar.denoiser.dit import NULL_SPEAKING, Conditions
from streamchar.denoiser.flow import set_reference_for_guidance, video_noise
from streamchar.denoiser.residual import (
    audio_correction_of,
    fed_back,
    to_latents,
    video_correction_mask,
    video_correction_time,
)
from streamchar.denoiser.rollout import (
    LastNoise,
    enter_window,
    prior_anchor_map,
    prior_means,
    start_unit_context,
)
from streamchar.engine.characters import Character
from streamchar.engine.chunk import Chunk, SessionClosed, frame_roles, padded_plan
from streamchar.engine.clock import ChunkTiming, PlaybackClock, SessionStats
from streamchar.engine.realign import Realigner
from streamchar.engine.workers import DeviceTimer, Worker
from streamchar.memory.window import WindowMemory
from streamchar.orchestrator.session import AudioConditions

if TYPE_CHECKING:
    from streamchar.engine.engine import Engine

logger = logging.getLogger(__name__)
MODES = ("text", "audio")
_CLOSING = threading.Lock()  # makes close()'s check-and-set atomic


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
        self.orchestrator = engine.orchestrator(self.characters) if mode == "text" else None
        self.stats = SessionStats()
        self.clock = PlaybackClock()
        seed = ecfg.seed if seed is None else seed
        self.generator = torch.Generator().manual_seed(seed)
        self._last_noise = LastNoise(ecfg.prior_last_noise, seed) if ecfg.prior_last_noise > 0 else None
        self.speech_end: float | None = None  # media time the last finished turn ended
        self._lock = threading.RLock()  # input (text, audio, interrupt) against planning
        self._realigner = Realigner(engine.phoneme_reader if mode == "text" else None, self.tl, self._lock)
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
        with engine.count_lock:
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
        self._keep = tuple(eng.cfg.engine.keep_correction)
        ecfg = eng.cfg.engine
        self._timbre = audio_correction_of(ecfg.audio_correction, eng.audio_codec, ecfg.timbre_memory)
        self._video_mask = video_correction_mask(
            ecfg.video_correction, ecfg.mouth_box, tuple(ref_video.shape[-2:]), ecfg.video_correction_margin
        )
        self._video_feedback = bool(ecfg.video_correction_feedback)
        self._video_noise_share, self._audio_noise_scale = ecfg.video_noise_share, ecfg.audio_noise_scale
        self._video_time = video_correction_time(ecfg.video_correction_time, ecfg.video_correction_memory)
        self._video_detail, self._video_skip = ecfg.video_correction_detail, ecfg.video_correction_skip
        self._prior_anchor = prior_anchor_map(ecfg.prior_anchor, ecfg.mouth_box, tuple(ref_video.shape[-2:]))
        self._use_priors = eng.priors is not None and (eng.denoiser.residual or not self.refine)
        if self._use_priors:
            self._unit_context = start_unit_context(eng.priors, len(self.characters), device)
        if self.context_cache:
            with eng.lock, eng.denoiser.streaming(self._cache), eng.autocast():
                set_reference_for_guidance(eng.denoiser, self.sampler.guidance, *self._references)
        self._memory = WindowMemory(tl, self.use_sink, self.use_motion)  # the sink chunk, the motion frames
        context = eng.cfg.engine.audio_context_tokens if self.mode == "text" else None
        self._chunk_decoder = eng.chunk_decoder(len(self.characters), context, side_stream=self.overlap)
        self._threads = eng.worker_threads(self.overlap)
        self._decoder = Worker("streamchar-decode", self._threads) if self.overlap else None
        self._cuda_events = device.type == "cuda" and self.overlap

    def state_nbytes(self) -> dict[str, int]:
        """Bytes of the per-session tensors (constant once the sink is set, whatever the session length)."""
        cache = self._cache.nbytes() if self._cache is not None else 0
        previous = self._memory.nbytes() if self._memory is not None else 0
        return {"kv_cache": cache, "motion_latents": previous, "audio_input": self._audio_in.nbytes,
                "orchestrator_context": len(self.orchestrator.backend) if self.orchestrator else 0}  # fmt: skip

    # -- input ---------------------------------------------------------------------------------------
    def push_text(self, text: str, final: bool = False, speaker: int = 0) -> None:
        """Transcript for ``speaker`` (0, or 1 in a dialogue); ``final`` closes the turn. Errors (see
        :meth:`~streamchar.orchestrator.session.Orchestrator.push_text`) leave the session as it was."""
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
        torch.set_num_threads(self._threads)  # this thread's (engine.worker_threads)
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
                self._realigner.realign(self.orchestrator, self._index, self.stats.realign_lag)
                plan = self.orchestrator.next_chunk(playing)
                self._realigner.planned(self._index, plan, playing)
            if playing < L_a:
                plan = padded_plan(plan, L_a)
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
        L = tl.chunk_latent_frames
        shape = (B, model.latent_channels, L, model.latent_size, model.latent_size)
        noise_video = video_noise(shape, self.generator, self._video_noise_share).to(device)
        noise_audio = torch.randn(B, tl.chunk_audio_tokens, model.audio_dim, generator=self.generator)
        noise_audio = (self._audio_noise_scale * noise_audio).to(device)
        cond = Conditions(cond.units.to(device), cond.speaking.to(device))
        given_latents = given.to(device) if given is not None else None
        mu_video = mu_audio = None
        if self._use_priors:
            with record_function("streamchar.priors"), eng.lock, eng.autocast():
                mu_video, mu_audio, self._unit_context = prior_means(
                    eng.priors,
                    cond,
                    given_latents,
                    self._unit_context,
                    self._references,
                    self._memory,
                    self._last_noise,
                    self._prior_anchor,
                )
            cond = Conditions(cond.units, cond.speaking, mu_audio, mu_video)
        with eng.lock, model.streaming(self._cache), eng.autocast():
            # without the context cache (an ablation), the whole window is recomputed at every step
            with record_function("streamchar.context_update"):
                context = enter_window(model, self._memory, n, self.context_cache, self._references)
            given_audio = given_latents
            if given_audio is not None and model.residual:  # a given chunk is its own mean: its residual is 0
                given_audio = torch.zeros_like(given_audio)
            timer = DeviceTimer(device)
            with record_function("streamchar.sample"):
                if self._use_priors and not self.refine:  # the ablation: the priors' means alone
                    video, audio = mu_video, mu_audio
                else:
                    video, audio = self.sampler.sample(
                        model, noise_video, noise_audio, cond, context, given_audio=given_audio
                    )
                    video, audio = to_latents(model, video.float(), audio.float(), mu_video, mu_audio,
                                              self._keep, self._timbre, cond.units, self._video_mask,
                                              self._video_time, self._video_detail,
                                              self._index < self._video_skip)  # fmt: skip
            timer.stop()
            if given_latents is not None:
                audio = given_latents
            video, audio = video.float(), audio.float()
        self._memory.push(fed_back(video, mu_video, self._video_feedback), audio)
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
            self._realigner.read(index, plan, wave)
        ready = time.perf_counter()
        deadline, missed = self.clock.schedule(media, ready)
        timing = ChunkTiming(index, media, duration, started, denoised, ready, deadline, missed)
        speaker, speaking = frame_roles(tl, plan, frames_n)
        self._emit(Chunk(index, frames, wave, speaker, speaking, timing, plan))

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
        self._references = self._memory = None
        self._chunk_decoder.close()
        self.orchestrator = None
        self._audio_in = self._audio_context = np.zeros(0, np.float32)
        self._out = queue.Queue(maxsize=1)
        with self.engine.count_lock:
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
