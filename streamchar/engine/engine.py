"""The engine: what every streaming session shares (denoiser, codecs, the orchestrator's LM, priors, the
phoneme reader, the device and its lock), built once from a config (:meth:`Engine.from_config`) and
handing out sessions (:class:`~streamchar.engine.session.StreamSession`).

    engine = Engine.from_config(cfg)                       # models, loaded once, shared by sessions
    with engine.session([engine.character()]) as session:
        ...
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

import torch

from streamchar.denoiser.build import latent_spec
from streamchar.denoiser.flow import EulerSampler, Guidance, check_audio_noise_scale, check_video_noise_share
from streamchar.denoiser.residual import (
    check_audio_correction,
    check_timbre_memory,
    check_video_correction,
    check_video_correction_detail,
    check_video_correction_skip,
    check_video_correction_time,
)
from streamchar.denoiser.rollout import check_last_noise, check_prior_anchor
from streamchar.engine.characters import Character, load_character
from streamchar.engine.session import StreamSession
from streamchar.loaders import (
    load_codecs,
    load_phoneme_reader,
    load_priors,
    load_teacher,
    load_unit_lm,
    meta_latent_spec,
    orchestrator_folder,
    read_distilled,
)
from streamchar.orchestrator.session import Orchestrator, VoicePrompt
from streamchar.precision import resolve_mixed_precision

logger = logging.getLogger(__name__)


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
        # the builder's intra-op threads (auto worker_threads splits them)
        self.threads = torch.get_num_threads()
        self.distilled: dict | None = None  # a distilled student's record: its steps, shift, folded guidance
        self._free_caches: list = []  # closed sessions' context caches, reused by new ones
        self.decoder_factory = None  # (characters, audio_context_tokens) -> ChunkDecoder; None: local
        self.fast_path: dict[str, str | bool] = {}  # what apply_fast_path put into effect
        self.phoneme_reader = None  # reads phonemes from generated audio latents (pointer realignment)
        self.priors = None  # the priors a residual denoiser refines (or, with engine.refine off, plays alone)
        self.lock = threading.Lock()  # one chunk at a time on the device
        self.sessions = 0  # open sessions
        self.count_lock = threading.Lock()  # guards ``sessions`` and the free caches

    @classmethod
    def from_config(cls, cfg, denoiser_path: str | None = None, with_orchestrator: bool = True) -> Engine:
        """Every part loaded once through :mod:`streamchar.loaders`: the codecs, then the denoiser (a teacher,
        or a student with its distilled record) sized by them, the orchestrator's LM, the priors a residual
        denoiser refines and the phoneme reader that realigns the pointer."""

        ecfg = cfg.engine
        keep = list(ecfg.keep_correction)
        if len(keep) != 2 or not all(0.0 <= k <= 2.0 for k in keep):
            raise ValueError(f"engine.keep_correction must be [video, audio], each in 0..2, got {keep}.")
        check_audio_correction(ecfg.audio_correction)
        check_timbre_memory(ecfg.timbre_memory)
        check_video_correction(ecfg.video_correction, ecfg.mouth_box, ecfg.video_correction_margin)
        check_last_noise(ecfg.prior_last_noise)
        check_prior_anchor(ecfg.prior_anchor)
        check_video_noise_share(ecfg.video_noise_share)
        check_audio_noise_scale(ecfg.audio_noise_scale)
        check_video_correction_time(ecfg.video_correction_time, ecfg.video_correction_memory)
        check_video_correction_detail(ecfg.video_correction_detail)
        check_video_correction_skip(ecfg.video_correction_skip)
        if ecfg.worker_threads < 0:
            raise ValueError(f"engine.worker_threads must be 0 (auto) or more, got {ecfg.worker_threads}.")
        device = _engine_device(ecfg.device)
        video_codec, audio_codec = load_codecs(cfg, device)
        path = denoiser_path or ecfg.denoiser_path
        denoiser = load_teacher(path, cfg, latent_spec(video_codec, audio_codec)).to(device)
        distilled = read_distilled(path)
        if distilled is not None:
            logger.info("a %d-step distilled student (guidance folded in)", distilled["steps"])
        unit_lm = vocab = None
        if with_orchestrator:
            if cfg.orchestrator.backend != "hf":
                raise ValueError("The engine runs the orchestrator in process; set orchestrator.backend=hf.")
            unit_lm, vocab, _ = load_unit_lm(orchestrator_folder(cfg), device=device)
        engine = cls(cfg, denoiser, video_codec, audio_codec, unit_lm, vocab, device,
                     resolve_mixed_precision(ecfg.mixed_precision))  # fmt: skip
        engine.distilled = distilled
        if denoiser.residual or not ecfg.refine:
            engine.priors = load_priors(cfg, device)
        if with_orchestrator and ecfg.realign:
            engine.phoneme_reader = load_phoneme_reader(cfg, audio_codec)
        engine.apply_fast_path()
        return engine

    @classmethod
    def random_init(cls, cfg, seed: int = 0) -> Engine:
        """Every component randomly initialised from the config's sizes (no checkpoint): for timing a preset
        whose weights you do not have, such as ``base`` (``streamchar bench stream --random-init``). The
        denoiser stands for a distilled student (guidance folded in: one branch, ``engine.steps`` steps); the
        pointer is not realigned. The character is the configured one, resized to the preset's images."""
        from streamchar.codecs.audio import build_audio_codec
        from streamchar.codecs.video import video_codec_from_config
        from streamchar.denoiser.build import build_denoiser
        from streamchar.orchestrator.model import build_unit_lm
        from streamchar.orchestrator.text import UnitVocabulary

        ecfg = cfg.engine
        device = _engine_device(ecfg.device)
        audio_codec = build_audio_codec(cfg, cfg.timeline)  # draws no random numbers: built before the seed
        spec = meta_latent_spec(cfg, audio_codec)
        audio_codec = audio_codec.to(device)
        torch.manual_seed(seed)
        with torch.device(device):  # initialised in place: a 1.3B model never passes through host memory
            denoiser = build_denoiser(cfg.denoiser, cfg.timeline, spec).eval()
            video_codec = video_codec_from_config(cfg, random_init=True)
            vocab = UnitVocabulary()
            unit_lm = build_unit_lm(cfg.orchestrator, vocab).eval()
        engine = cls(cfg, denoiser, video_codec, audio_codec, unit_lm, vocab, device,
                     resolve_mixed_precision(ecfg.mixed_precision))  # fmt: skip
        engine.distilled = {"steps": ecfg.steps, "shift": ecfg.shift, "random_init": True}
        if denoiser.residual:
            from streamchar.denoiser.build import acoustic_prior_kwargs, video_prior_kwargs
            from streamchar.denoiser.prior import AcousticPrior, Priors, VideoPrior

            with torch.device(device):
                engine.priors = Priors(AcousticPrior(**acoustic_prior_kwargs(cfg.prior.audio, cfg.timeline, spec)),
                                       VideoPrior(**video_prior_kwargs(cfg.prior.video, cfg.timeline, spec)))  # fmt: skip
        engine.apply_fast_path()
        return engine

    def apply_fast_path(self) -> dict[str, str | bool]:
        """Put ``cfg.engine``'s fast-path switches into effect on the loaded models (call again after changing
        them, as the benchmark does between rows); returns what is in effect. Weights are cast in place:
        back to fp32 after bf16 they keep the bf16-rounded values. A step newly compiled is compiled here, by
        one short warm-up session (:meth:`warm_up`), so that no real session waits for it."""
        from streamchar.config import resolve_switch
        from streamchar.denoiser.attention import BACKENDS, flash_available
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
        attention = ecfg.attention
        if attention == "auto":
            attention = "flash" if flash_available() else self.cfg.denoiser.attention
        if attention not in BACKENDS:
            raise ValueError(
                f"engine.attention must be auto or one of {', '.join(BACKENDS)}, got '{attention}'."
            )
        self.denoiser.set_attention_backend(attention)
        compile_on = resolve_switch(ecfg.compile, "engine.compile", cuda or _cpu_compiler() is not None)
        mode = ("reduce-overhead" if cuda and ecfg.cuda_graphs else "default") if compile_on else None
        newly_compiled = mode is not None and mode != self.denoiser._compiled_mode
        if mode != self.denoiser._compiled_mode:
            self.denoiser.compile_step(mode)
        if newly_compiled and not self._compile_in_warm_up():
            mode = None
        lm = hf_backend_options(self.cfg, self.unit_lm) if self.unit_lm is not None else {}
        orchestrator = {"orchestrator_weights": "bf16" if lm_dtype == torch.bfloat16 else "fp32",
                        "orchestrator_kv_cache": self.cfg.orchestrator.kv_cache,
                        "orchestrator_static_cache": lm.get("static", False),
                        "orchestrator_lean_decode": lm.get("lean", False)}  # fmt: skip
        self.fast_path = {"precision": self.precision, "weights": weights, "attention": attention,
                          "compile": mode or "off", "context_cache": ecfg.context_cache,
                          "pinned_memory": ecfg.pinned_memory and cuda,
                          "worker_threads": self.worker_threads(ecfg.decode_overlap)} | orchestrator  # fmt: skip
        logger.info("fast path: %s", self.fast_path)
        return self.fast_path

    def worker_threads(self, overlap: bool) -> int:
        """Torch intra-op threads for a session's chunk loop and its decode worker (``engine.worker_threads``;
        auto: on a CPU with decode overlap, half of the builder's threads each, since the two run side by side
        and a CPU oversubscribed by both is slower than each on its own half: RTF 0.57 -> 0.42 on 2 cores,
        docs/performance.md)."""
        if self.cfg.engine.worker_threads:
            return self.cfg.engine.worker_threads
        if self.device.type == "cpu" and overlap:
            return max(1, self.threads // 2)
        return self.threads

    def warm_up(self, steps: int | None = None) -> float:
        """Short offline sessions through the denoising step, one per shape it takes (a few words spoken by
        one character and by two, when the engine has an orchestrator; a second of silence driving one), so
        that compilation, graph capture and first-call costs are paid here and not by the first real session;
        returns their seconds."""
        start, character = time.perf_counter(), self.character()
        runs = []
        if self.unit_lm is not None:
            runs += [([character], "text"), ([character, character], "text")]
        runs.append(([character], "audio"))
        for characters, mode in runs:
            session = self.session(characters, mode=mode, steps=steps, tail_seconds=0.0)
            try:
                if mode == "text":
                    for speaker in range(len(characters)):
                        session.push_text("Hi there.", final=True, speaker=speaker)
                else:
                    session.push_audio(torch.zeros(self.timeline.sample_rate).numpy(), final=True)
                for _ in session:
                    pass
            finally:
                session.close()
        return time.perf_counter() - start

    def _compile_in_warm_up(self) -> bool:
        """Compile the step now, in :meth:`warm_up`; where that fails (no working C++ compiler, an operation
        the compiler does not take) say so and go back to the eager step. Returns whether it is compiled."""
        try:
            self.character()
        except (FileNotFoundError, ValueError) as err:  # no default character: the first session compiles it
            logger.info(
                "no character to warm the compiled step with (%s); the first session compiles it", err
            )
            return True
        try:
            seconds = self.warm_up()
        except Exception as err:  # noqa: BLE001 - torch.compile's failures come in many types
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            logger.warning("torch.compile of the denoising step failed (%s); running it eagerly (set "
                           "engine.compile=off to skip the attempt)", first_line)  # fmt: skip
            self.denoiser.compile_step(None)
            return False
        logger.info("compiled the denoising step in a %.1f s warm-up session", seconds)
        return True

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
                return Orchestrator.from_config(self.cfg, (self.unit_lm, self.vocab), prompts)
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
        with self.count_lock:
            if self._free_caches:
                return self._free_caches.pop()
        return self.denoiser.static_cache()

    def give_cache(self, cache) -> None:
        """Take a closed session's cache back for the next session (at most a few are kept)."""
        if cache is None:
            return
        cache.reset()
        with self.count_lock:
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


def _cpu_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend builds its kernels with, when one is installed."""
    return shutil.which("g++") or shutil.which("c++")
