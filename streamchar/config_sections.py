"""The sections of :class:`~streamchar.config.StreamCharConfig`, one typed dataclass per part of the system.

The dataclass defaults are the ``tiny`` preset (``configs/tiny.yaml`` spells it out); loading, overrides and
the root config are in :mod:`streamchar.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# -- codecs -------------------------------------------------------------------------------------
@dataclass
class VideoCodecConfig:
    kind: str = "tiny"  # tiny (AutoencoderTiny) | kl (AutoencoderKL) | wan (AutoencoderKLWan)
    # a trained codec folder (streamchar train vae) or a local diffusers checkpoint; a relative path is
    # looked up from the working directory, then from the repository (the tiny preset's trained codec)
    path: str | None = "checkpoints/tiny/vae"
    image_size: int = 128
    latent_channels: int = 8
    # constructor kwargs for the diffusers class when building from scratch (kind-specific); null = the
    # class's own defaults, or the checkpoint's config when loading. Overrides merge key by key.
    arch: dict[str, Any] | None = field(
        default_factory=lambda: {
            "encoder_block_out_channels": [32, 32, 32, 32],
            "decoder_block_out_channels": [32, 32, 32, 32],
            "num_encoder_blocks": [1, 3, 3, 3],
            "num_decoder_blocks": [3, 3, 3, 1],
        }
    )


@dataclass
class AudioCodecConfig:
    kind: str = "mel"  # mel | encodec
    path: str | None = None  # EnCodec checkpoint (HF folder or Meta's .th file)
    n_mels: int = 80
    n_fft: int = 1024
    hop_length: int = 160  # 10 ms at 16 kHz
    win_length: int = 1024
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5
    # latent normalisation of log-mel values: (log_mel - mean) / std
    log_mel_mean: float = -5.0
    log_mel_std: float = 2.5
    griffin_lim_iters: int = 32
    griffin_lim_momentum: float = 0.99
    mel_inversion_iters: int = 30  # NNLS refinement of the mel pseudo-inverse


# -- data ---------------------------------------------------------------------------------------
@dataclass
class SynthConfig:
    seed: int = 0
    num_characters: int = 240
    clips_per_character: int = 8
    dialogue_fraction: float = 0.2  # fraction of a character's clips that are two-character dialogues
    listening_fraction: float = 0.05  # clips where the character only listens (idle, nods, blinks)
    styles: list[str] = field(default_factory=lambda: ["cartoon", "shaded", "textured"])
    heldout_identity_fraction: float = 0.1
    heldout_sentence_fraction: float = 0.1
    min_words: int = 4
    max_words: int = 14
    max_sentences: int = 2
    lead_silence: list[float] = field(default_factory=lambda: [0.2, 0.9])  # seconds, [min, max]
    tail_silence: list[float] = field(default_factory=lambda: [0.3, 1.0])
    clips_per_shard: int = 32
    workers: int = 0  # 0 = one per core


@dataclass
class PrepareConfig:
    clips_per_shard: int = 32
    min_seconds: float = 0.5
    max_seconds: float = 60.0
    video_extensions: list[str] = field(default_factory=lambda: [".mp4", ".mkv", ".mov", ".webm", ".avi"])


@dataclass
class EncodeConfig:
    batch_frames: int = 64
    dtype: str = "float16"  # storage dtype of latents: float16 | float32
    device: str = "auto"
    # autocast for the video encoder: no | bf16 | auto (bf16 where the hardware runs it natively;
    # measured on the AMX CPU: 3.1x faster, latents within 0.06 of fp32 at a latent std of 0.76)
    mixed_precision: str = "no"
    max_shards: int | None = None  # video latents of the first N corpus shards only (a subset to train on)
    # audio latents and conditions of the first N shards (None: all); clips past max_shards then hold audio
    # only, which the acoustic prior trains on (audio is cheap to encode, video is not)
    audio_max_shards: int | None = None


@dataclass
class DataConfig:
    synth: SynthConfig = field(default_factory=SynthConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)


# -- training -----------------------------------------------------------------------------------
@dataclass
class TrainVAEConfig:
    steps: int = 20000
    batch_size: int = 16
    crop_size: int = 64  # train on random crops (multiples of the spatial factor); 0 = full frames
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_accum: int = 1
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    kl_weight: float = 1e-6  # for kl / wan codecs only
    frames_per_clip: int = 24  # frames sampled from each clip into the in-memory training pool
    eval_frames: int = 256
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 500
    mixed_precision: str = (
        "auto"  # auto (bf16 where native: CUDA, or AVX512-BF16/AMX CPUs) | no | bf16 | fp16
    )
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default


@dataclass
class TrainTeacherConfig:
    steps: int = 20_000
    batch_size: int = 8  # windows per process and step
    grad_accum: int = 1
    lr: float = 3e-4
    lr_min: float = 1e-5
    warmup_steps: int = 500
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    # flow matching: logit-normal timesteps, warped by shift
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    # residual formulation: timesteps in (0, max_t], since a shallow sampler (denoiser.sample_start) needs no
    # more (the plain formulation always trains the whole flow)
    max_t: float = 0.5
    # residual formulation: the video tokens' own timesteps, in (0, max_t_video], drawn apart from the audio's
    # (the whole flow, 1, for a video sampled from noise while the audio keeps its shallow start); null = the
    # audio's time
    max_t_video: float | None = None
    # the share of each window's video noise that all its frames have in common, sqrt(r) * shared + sqrt(1 - r)
    # * own (PYoCo's mixed noise; the residual it stands in for is shared by neighbouring frames); 0 = off
    video_noise_share: float = 0.0
    # start from the weights of a trained teacher of the same architecture (a checkpoint or run folder)
    init: str | None = None
    # classifier-free guidance dropout, each independent
    cond_drop: float = 0.1
    ref_image_drop: float = 0.1
    ref_voice_drop: float = 0.1
    # windows whose current audio is given clean (t = 0) and only video is denoised (given speech -> video);
    # in those, the audio conditions are dropped with audio_driven_cond_drop (no alignment at hand)
    audio_driven_fraction: float = 0.25
    audio_driven_cond_drop: float = 0.5
    audio_loss_weight: float = 1.0
    mouth_weight: float = 4.0  # video loss weight inside the renderer's mouth box (1 = uniform)
    first_chunk_prob: float = 0.1
    log_every: int = 25
    eval_every: int = 500
    eval_windows: int = 64
    ckpt_every: int = 250
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    # with several processes (accelerate launch): shard parameters, gradients and optimiser state with
    # PyTorch FSDP2 instead of replicating them (DDP)
    fsdp: bool = False


@dataclass
class TrainOrchestratorConfig:
    steps: int = 1200
    batch_size: int = 16  # sequences per process and step
    max_tokens: int = 768  # sequence length cap (voice prompts + the session's turns)
    lr: float = 1e-3
    lr_min: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    log_every: int = 25
    eval_every: int = 250
    eval_sequences: int = 128
    ckpt_every: int = 250
    seed: int = 0
    num_threads: int = 0


@dataclass
class TrainPriorConfig:
    """Regression training of a prior (``streamchar train prior --which audio|video``)."""

    steps: int = 2500
    batch_size: int = 64  # windows per process and step
    lr: float = 1e-3
    lr_min: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    mixed_precision: str = "auto"
    # acoustic prior: loss weight of the context tokens of a window (the chunk's tokens weigh 1)
    context_weight: float = 0.5
    # acoustic prior: weight of the phonetic loss (a frozen frame phoneme probe, fitted on the cache's
    # ground-truth train speech in phoneme_probe_steps steps, reads the means; cross-entropy against the units'
    # phonemes); 0 = L1 alone. Equal budget: PER 25.4 -> 14.8 % (docs/results/formulations.md, "Phonetic loss")
    phoneme_weight: float = 0.1
    phoneme_probe_steps: int = 600
    # video prior: loss weight inside the mouth box (1 = uniform); the chunk audio it reads comes from the
    # trained acoustic prior for this fraction of windows (what it gets when speaking from text) and is the
    # clip's own speech otherwise (what it gets when audio-driven)
    mouth_weight: float = 4.0
    # > 1: a window whose mouth barely changes in the latents (a dark mouth on dark skin; also a silent window)
    # has its mouth weight scaled by sqrt(batch mean / its own) of the mouth box's variance over frames, up to
    # this factor (single-window training); 0 = off
    mouth_contrast: float = 0.0
    prior_audio_fraction: float = 0.5
    # video prior: > 0 trains on sessions of this many chunks rolled out as the engine runs it (each chunk from
    # the prior's own last latent; measured to hold long sessions worse than last_noise); 0 trains on single
    # windows. rollout_eval_chunks: the held-out rollout's length (its drift is in the curve either way)
    rollout_chunks: int = 0
    rollout_eval_chunks: int = 8
    # video prior: the last motion latent of a window is perturbed by Gaussian noise whose standard deviation is
    # drawn uniformly up to this (the target stays clean), so it learns to pull a drifted frame back rather than
    # carry the drift on; 0 = off
    last_noise: float = 0.0
    # video prior: the last motion latent of a window is also moved toward the batch's next window's (mostly
    # another character's face) by a fraction drawn uniformly up to this, the target clean: a lesson in pulling
    # a wrong face back to the reference, the drift long sessions show; 0 = off
    last_mix: float = 0.0
    # start from the weights of a trained prior of the same architecture (a folder; e.g. the last_noise
    # fine-tune of a prior trained on single windows)
    init: str | None = None
    first_chunk_prob: float = 0.1
    log_every: int = 25
    eval_every: int = 250
    eval_windows: int = 256
    ckpt_every: int = 250
    seed: int = 0
    num_threads: int = 0


def _video_prior_training() -> TrainPriorConfig:
    return TrainPriorConfig(batch_size=16, lr=5e-4, eval_windows=128)


@dataclass
class TrainConfig:
    vae: TrainVAEConfig = field(default_factory=TrainVAEConfig)
    teacher: TrainTeacherConfig = field(default_factory=TrainTeacherConfig)
    orchestrator: TrainOrchestratorConfig = field(default_factory=TrainOrchestratorConfig)
    prior_audio: TrainPriorConfig = field(default_factory=TrainPriorConfig)
    prior_video: TrainPriorConfig = field(default_factory=_video_prior_training)


# -- denoiser and sampling --------------------------------------------------------------------------
@dataclass
class DenoiserConfig:
    width: int = 256
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 4  # latent pixels per token side: 16x16 latents -> 16 tokens per latent frame
    cond_window: float = 1.0  # latent frames either side that the condition cross-attention reads
    rope_theta: float = 10_000.0
    qk_norm: bool = True
    attention: str = "sdpa"  # sdpa | flex | flash | naive
    gradient_checkpointing: bool = False
    # how the DiT meets the priors (DESIGN.md section 7): residual (it denoises the normalised residual
    # (x0 - mu) / scale around the prior means mu, which it also reads as conditions) or plain (from noise,
    # no prior: the formulation before the priors)
    formulation: str = "residual"
    # the noise scales around mu, in normalised latent units: the RMS of the residuals x0 - mu of the tiny
    # priors (bench/residual_scales.py), so the state (x0 - mu) / scale is unit-sized
    residual_scale_audio: float = 0.24
    residual_scale_video: float = 0.15
    # residual formulation: where sampling starts. 1 = from noise; < 1 = shallow (DiffSinger), from the priors'
    # means noised to this time, so a few steps refine the means instead of making the chunk anew (measured:
    # docs/results/formulations.md); train.teacher.max_t must lie above it
    sample_start: float = 0.3
    # residual formulation: where the video's sampling starts, when not where the audio's does (1: the video
    # residual made from noise around the video prior's means, the audio refined shallowly; the teacher then
    # needs train.teacher.max_t_video above it); null = sample_start
    sample_start_video: float | None = None
    # what the video head predicts: velocity (the flow's v) or x0 (the clean state, v = (z_t - x0) / t), whose
    # untrained output, near 0, is the priors' means as they are instead of the state kept as it is (the start
    # noise played); residual formulation only
    video_prediction: str = "velocity"


@dataclass
class AcousticPriorConfig:
    width: int = 256
    speaker_dim: int = 128
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 1, 2, 4, 8])
    context_seconds: float = 0.64  # units before the chunk it reads (its only context; no look-ahead)
    # phoneme and F0-bucket embeddings added to each unit's own (what a phoneme sounds like is shared by its
    # pitches; docs/results/formulations.md, "Factorised units"); a trained prior's own prior.json says which
    # architecture it has, so priors trained without it still load
    factorised_units: bool = True
    dropout: float = 0.0  # on each block's update while training (0 = none)


@dataclass
class VideoPriorConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 96])  # U-Net widths at 1, 1/2, 1/4 size
    audio_width: int = 128


@dataclass
class PriorConfig:
    """The priors the DiT refines (``denoiser/prior.py``) and where trained ones are loaded from."""

    audio: AcousticPriorConfig = field(default_factory=AcousticPriorConfig)
    video: VideoPriorConfig = field(default_factory=VideoPriorConfig)
    audio_path: str | None = "checkpoints/tiny/prior-audio"  # a `streamchar train prior` run or its export
    video_path: str | None = "checkpoints/tiny/prior-video"


@dataclass
class SampleConfig:
    steps: int = 16
    shift: float = 1.0
    guidance_conditions: float = 2.0
    guidance_ref_image: float = 1.5
    guidance_ref_voice: float = 1.5
    seed: int = 0
    mixed_precision: str = "auto"  # autocast while sampling: auto (bf16 where native) | no | bf16


@dataclass
class OrchestratorConfig:
    path: str | None = "checkpoints/tiny/orchestrator"  # a saved HF causal LM + tokenizer
    architecture: str = "llama"  # llama | qwen2 (both load in transformers and vLLM without custom code)
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 768
    max_positions: int = 4096
    backend: str = "hf"  # hf (in-process, KV cache) | vllm (optional extra)
    kv_cache: bool = True  # hf: keep the LM's KV cache across tokens and chunks (off only for the benchmark)
    # hf: auto (on CUDA) | on | off: a preallocated KV cache and bucketed appends, so the per-frame pass has
    # a few fixed shapes (compiled, and captured as CUDA graphs, when engine.compile is on)
    static_cache: str = "auto"
    # hf: auto | on | off: the per-frame pass through a lean decode step over the LM's weights instead of
    # transformers' modules (same logits to float rounding; auto: on where the cache is not static)
    lean_decode: str = "auto"
    device: str = "auto"
    language: str = "en-us"  # espeak-ng voice used for phonemes
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0
    max_context_tokens: int = 2048  # the LM's window: voice prompts + history + the current turn
    max_history_tokens: int = 768  # earlier turns kept in context (oldest dropped first)
    max_phoneme_frames: int = 12  # a phoneme held this long must move on (tiny corpus: p99.9 8, max 12)
    max_silence_frames: int = 16  # likewise a pause inside a turn (tiny corpus: max 13)
    max_push_chars: int = 100_000  # one push_text call


@dataclass
class EngineConfig:
    """The live chunk loop (``streamchar generate``, ``stream``, ``serve``)."""

    denoiser_path: str = "checkpoints/tiny/teacher"  # a teacher or distilled student checkpoint folder
    # the shipped character used when none is given (image, voice, voice prompt): a name under
    # characters_dir or a folder
    character: str = "ada"
    characters_dir: str = "checkpoints/tiny/characters"
    steps: int = 4  # denoising steps per chunk; nothing in the engine assumes a number
    guidance_conditions: float = 2.0
    guidance_ref_image: float = 1.5
    guidance_ref_voice: float = 1.5
    shift: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mixed_precision: str = "auto"  # auto (bf16 where native) | no | bf16
    decode_overlap: bool = True  # decode chunk i beside the denoising of chunk i + 1
    # torch intra-op threads of a session's chunk loop and of its decode worker, each; 0: auto (on a CPU with
    # decode overlap half the cores each, so the two side by side do not oversubscribe them; else all)
    worker_threads: int = 0
    tail_seconds: float = 1.0  # listening after the last turn before an offline render ends
    lead_seconds: float = 0.0  # listening before the first turn starts
    lookahead_chunks: int = 1  # live: chunks generated ahead of playback (interrupt latency grows with it)
    audio_context_tokens: int = 4  # audio decoder context carried from one chunk into the next
    # the fast path (docs/performance.md); each switch can be turned off to measure what it buys
    # auto (bf16 when the engine runs in bf16) | fp32 | bf16: the denoiser's stored weights, and on CUDA the
    # orchestrator LM's (on a CPU its host-bound passes gain nothing and it stays fp32, as the shipped
    # results were measured); going back to fp32 keeps the bf16-rounded values (reload for quality runs)
    weights: str = "auto"
    # auto (on CUDA, and on a CPU with a C++ compiler: 1.3-1.6x faster sampling there, docs/performance.md) | on |
    # off: torch.compile the denoising step, at engine build (a warm-up session; eager again if it fails)
    compile: str = "auto"
    cuda_graphs: bool = True  # with compile on CUDA: replay the fixed-shape step as a CUDA graph
    # auto (flash-attn when installed on CUDA, else denoiser.attention) | sdpa | flex | flash | naive
    attention: str = "auto"
    context_cache: bool = True  # reuse context K/V in every step (off: recompute the whole window each step)
    pinned_memory: bool = True  # CUDA: frames and PCM reach the host through pinned buffers
    # the window memory and the pointer (switch one off for an ablation)
    sink: bool = True  # the first chunk stays in the window for the whole session
    motion_frames: bool = True  # each chunk sees the previous chunk's last frames
    realign: bool = True  # move the pointer to where the generated speech got (needs phoneme_reader)
    refine: bool = True  # the DiT refines the priors' means (off: the priors alone, an ablation)
    # (video, audio): how much of a residual DiT's correction of the priors' means to keep, mu + keep * s * z
    keep_correction: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # the audio correction played: whole, timbre (its mean over the chunk's frames per frequency bin), or
    # speech_timbre (that mean over the frames where a phoneme is planned, played on them alone)
    audio_correction: str = "whole"
    # timbre: the weight of the session's earlier chunks in the timbre played (a running average per character,
    # m * last + (1 - m) * this chunk's); 0 plays each chunk's own
    timbre_memory: float = 0.0
    # the video correction played: whole, or outside_mouth (none of it inside mouth_box: the video prior keeps
    # the lip shapes, the correction acts on the rest of the face)
    video_correction: str = "whole"
    # (x0, y0, x1, y1), fractions of the frame: where characters' mouths are drawn. The default holds the tiny
    # corpus's renderer mouth boxes from their 1st to 99th percentile over training clips (docs/results/formulations.md)
    mouth_box: list[float] = field(default_factory=lambda: [0.30, 0.48, 0.70, 0.80])
    # outside_mouth: how far (a fraction of the frame, on every side) the box the correction stays out of reaches
    # past mouth_box, for the cells whose decoded pixels reach into the mouth; 0 = mouth_box itself
    video_correction_margin: float = 0.0
    # whether the video correction played is also what later chunks read (the sink chunk, the motion frames,
    # the video prior's last latent); false shows it and feeds back the video prior's means alone, so the session's
    # course (the audio included) is the one the means set and the correction cannot compound over minutes
    video_correction_feedback: bool = True
    # the video correction played in time: frames (each frame its own) or mean (its mean over the chunk's frames,
    # so it holds still instead of flickering), averaged over the session's chunks with video_correction_memory
    # (m * last + (1 - m) * this chunk's; 0 plays each chunk's own), or session (that mean over all the session's
    # chunks so far, equally weighted; the memory is not read)
    video_correction_time: str = "frames"
    video_correction_memory: float = 0.0
    # the video correction's spatial detail alone: at each cell, minus its mean over the n x n cells around it
    # among those it is played on (an odd n >= 3), so it sharpens without shifting colour or shape; 0 = all of it
    video_correction_detail: int = 0
    # a session's first n chunks show the video prior's means alone, their video correction counted as zero in the
    # average over chunks (video_correction_time mean or session: the correction then fades in): the first chunk,
    # made from the references before any motion frames, is where a student's correction is largest and blotchy;
    # 0 = from the first chunk
    video_correction_skip: int = 0
    # the standard deviation of Gaussian noise on the last motion latent the video prior reads (never on the
    # reference): a prior fine-tuned on noisy last latents then pulls each chunk back toward the reference
    # instead of carrying its own small errors on over minutes; 0 = off
    prior_last_noise: float = 0.0
    # how far the last motion latent the video prior reads is moved toward the reference, last + a * (reference -
    # last), before that noise: a pull back to the character's own face at every chunk, so a session stays as
    # close to the reference as its first seconds; 0 = off
    prior_anchor: float = 0.0
    # the share of each chunk's video start noise that all its frames have in common, sqrt(r) * shared +
    # sqrt(1 - r) * own: for a teacher trained so (train.teacher.video_noise_share); 0 = each frame its own
    video_noise_share: float = 0.0
    # the audio start noise times this (a sampling temperature, as Glow-TTS's noise scale): below 1 the student's
    # audio correction comes nearer the likeliest speech for the chunk, which the recognizer hears better; 1 = as
    # trained
    audio_noise_scale: float = 1.0
    phoneme_reader: str = (
        "checkpoints/eval/recognizer"  # a recognizer folder (streamchar eval train recognizer)
    )


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # a bearer token every request must carry; null = none
    max_sessions: int = 4
    max_text_chars: int = 2000  # per text message
    max_message_bytes: int = 2_000_000  # any one WebSocket message
    max_image_bytes: int = 1_500_000
    max_image_pixels: int = 4096 * 4096
    max_session_seconds: float = 3600.0  # playback time after which a session is closed


@dataclass
class DistillConfig:
    """Two-stage distillation (``streamchar distill stage1|stage2``), DESIGN.md section 9."""

    teacher: str = "checkpoints/tiny/teacher"  # the frozen teacher (real score; the students start from it)
    # a second frozen teacher whose audio score DMD matches instead of the teacher's (its video stays the
    # teacher's): a student that takes its video from one teacher and its voice from another; residual teachers
    # with the same audio start. null = the teacher's own
    audio_teacher: str | None = None
    # DMD scores the audio (the real and the fake score) with the video re-noised at the audio's time instead of
    # at the video's own (a teacher with two starts re-noises its video up to 0.98, where it tells the audio
    # nothing); with one start the two times are the same and this only costs two more model calls
    audio_score_tied: bool = False
    student_steps: int = 2  # 1, 2 or 4
    shift: float = 1.0  # the student's sampling grid
    # the real score's classifier-free guidance, folded into the student
    guidance_conditions: float = 2.0
    guidance_ref_image: float = 1.5
    guidance_ref_voice: float = 1.5
    t_min: float = 0.02  # DMD re-noising range
    t_max: float = 0.98
    fake_updates: int = 1  # fake-score updates per student update
    audio_loss_weight: float = 1.0
    # stage 1: teacher ODE pairs, regression, then DMD on single windows
    pairs: int = 160
    pair_teacher_steps: int = 16
    pair_record_steps: int = 4  # pair states on a 4-step grid serve 1-, 2- and 4-step students
    pairs_dir: str | None = None  # where the pair shards go; default RUN/pairs
    regression_steps: int = 300
    dmd_steps: int = 200
    # stage 2: rollouts of consecutive chunks from the student's own motion frames and sink
    init: str | None = None  # the stage-1 student (stage 2 starts from it)
    rollout_chunks: int = 4
    rollout_steps: int = 100
    # where each rolled-out chunk's conditions come from: corpus (the clip's own frame-aligned units) or
    # orchestrator (planned from the clip's transcript by the orchestrator, whose pointer is re-aligned
    # after every chunk to the audio generated so far, read by a phoneme probe)
    rollout_conditions: str = "corpus"
    # weight of a frame-phoneme cross-entropy on each rolled-out chunk's speech, read by a small probe fitted on
    # the latent cache's ground truth (not the evaluation recognizer); 0 = DMD alone
    phoneme_weight: float = 0.0
    # stage 2: weight of a regression of the mean over each rolled-out chunk's frames of the student's video
    # sample (what engine.video_correction_time=mean plays) on the ground truth's, outside the engine's mouth box
    # when engine.video_correction=outside_mouth: the distribution match alone leaves that mean at the video
    # prior's (DMD with a regression on real data); 0 = DMD alone
    video_mean_weight: float = 0.0
    # stage 2: weight of a regression of each rolled-out chunk's timbre (the student's audio sample's mean over
    # the chunk's speech frames per frequency bin: what engine.audio_correction=timbre plays) on the ground
    # truth's, in the same residual state; 0 = DMD alone
    audio_timbre_weight: float = 0.0
    # stage 2: the audio correction the student is trained to make: whole, or timbre (only its mean over each
    # chunk's frames per frequency bin reaches the distribution match and the rollout: what the engine plays
    # with engine.audio_correction=timbre)
    audio_correction: str = "whole"
    # the phoneme reader of the orchestrator mode: the evaluation suite's CTC recognizer when this folder
    # holds one (`streamchar eval train recognizer`), else a frame probe fitted on the latent cache
    phoneme_reader: str | None = "checkpoints/eval/recognizer"
    batch_size: int = 4  # windows (stage 1) or rollouts (stage 2) per process and step
    lr_regression: float = 2e-4
    lr_student: float = 2e-5
    lr_fake: float = 1e-4
    lr_min_fraction: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    log_every: int = 10
    ckpt_every: int = 25
    seed: int = 0
    num_threads: int = 0
    fsdp: bool = False  # with several processes, shard the student and the fake score (FSDP2)
