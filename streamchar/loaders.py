"""Loading trained model folders: one place, below the engine and the trainers that both need them.

Every part is built once: :func:`load_codecs` builds the codecs, and the denoiser and priors take their
latent sizes (:func:`~streamchar.denoiser.build.latent_spec`) from those codecs.

A denoiser folder is a teacher run (its newest checkpoint) or a checkpoint folder; a distilled student also
holds ``distilled.json`` (its steps, shift and folded guidance; :func:`read_distilled`).

A prior folder (``streamchar train prior`` exports ``RUN/final``; the model folder ships it as ``prior-audio/``
and ``prior-video/``) holds ``model.safetensors`` and ``prior.json``: its kind (``audio`` | ``video``) and the
constructor arguments it was built with, so it loads whatever the current config says.

The orchestrator's unit LM (:func:`load_unit_lm`, :func:`load_orchestrator`) is an HF folder written by
:func:`~streamchar.orchestrator.model.save_unit_lm`. A trained instrument folder (:func:`load_instrument`; the
phoneme reader that realigns the pointer, :func:`load_phoneme_reader`) holds ``model.safetensors`` and
``config.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from streamchar.checkpoints import CheckpointError, list_checkpoints
from streamchar.config import StreamCharConfig, resolve_asset_path, to_dict
from streamchar.data.phonemes import F0Buckets
from streamchar.denoiser.build import LatentSpec, build_denoiser, latent_spec
from streamchar.denoiser.dit import JointDiT
from streamchar.denoiser.prior import AcousticPrior, VideoPrior
from streamchar.orchestrator.backends import make_backend
from streamchar.orchestrator.model import SIDECAR, OrchestratorCheckpointError
from streamchar.orchestrator.reader import CTCRecognizer, LatentPhonemeReader, Recognizer
from streamchar.orchestrator.session import Orchestrator
from streamchar.orchestrator.text import UnitVocabulary

logger = logging.getLogger(__name__)

DISTILLED = "distilled.json"  # written beside a student's weights: its steps, shift and folded guidance
PRIOR_RECORD = "prior.json"
PRIOR_CLASSES = {"audio": AcousticPrior, "video": VideoPrior}


class LoadError(ValueError):
    """A model folder that cannot be loaded; the message says what to do."""


# -- codecs -----------------------------------------------------------------------------------------------
def load_codecs(cfg, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(video codec, audio codec)`` as configured (``video_codec``, ``audio_codec``), on ``device``."""
    from streamchar.codecs.audio import build_audio_codec
    from streamchar.codecs.video import video_codec_from_config

    return video_codec_from_config(cfg).to(device), build_audio_codec(cfg, cfg.timeline).to(device)


def meta_latent_spec(cfg, audio_codec: torch.nn.Module | None = None) -> LatentSpec:
    """The configured codecs' latent sizes without their weights (counting FLOPs, random initialisation): the
    video codec built on the meta device from its section (no memory, no random numbers drawn), the audio
    codec as configured, or ``audio_codec`` when it is already built."""
    from streamchar.codecs.audio import build_audio_codec
    from streamchar.codecs.video import video_codec_from_config

    with torch.device("meta"):
        video_codec = video_codec_from_config(cfg, random_init=True)
    return latent_spec(
        video_codec, audio_codec if audio_codec is not None else build_audio_codec(cfg, cfg.timeline)
    )


# -- denoisers: teachers and distilled students ------------------------------------------------------------
def read_distilled(path: str | Path) -> dict | None:
    """A student checkpoint's ``distilled.json`` (None for a teacher); ``path`` is the checkpoint folder
    or the distillation run that exported it."""
    path = resolve_asset_path(path)
    for folder in (path, path / "student"):
        if (folder / DISTILLED).is_file():
            return json.loads((folder / DISTILLED).read_text())
    return None


def _check_trained_window(checkpoint: Path, cfg: StreamCharConfig) -> None:
    """Refuse a timeline whose window differs from training: positions would silently move."""
    for record in (checkpoint / "denoiser.json", checkpoint.parent.parent / "denoiser.json"):
        if record.is_file():
            trained = json.loads(record.read_text()).get("timeline")
            now = to_dict(cfg.timeline)
            changed = sorted(k for k in trained or {} if trained[k] != now.get(k))
            if changed:
                raise CheckpointError(
                    f"The teacher at {checkpoint} was trained with another window ({', '.join(changed)} differ); "
                    "sample with the timeline it was trained with."
                )
            return


def trained_denoiser_section(checkpoint: Path, cfg: StreamCharConfig):
    """The ``denoiser`` section a checkpoint was trained with (its ``denoiser.json``), so a model folder loads
    whatever the current config says; a record from before the priors is the plain formulation."""
    from dataclasses import fields

    from streamchar.config_sections import DenoiserConfig

    for record in (checkpoint / "denoiser.json", checkpoint.parent.parent / "denoiser.json"):
        if record.is_file():
            trained = json.loads(record.read_text())
            names = {f.name for f in fields(DenoiserConfig)}
            values = {k: v for k, v in trained.items() if k in names}
            values.setdefault("formulation", "plain")
            values["attention"] = cfg.denoiser.attention  # a runtime choice, not part of the weights
            values["gradient_checkpointing"] = cfg.denoiser.gradient_checkpointing
            return DenoiserConfig(**values)
    return cfg.denoiser


def teacher_record(run_or_checkpoint: str | Path) -> dict:
    """The ``train.teacher`` settings a teacher was trained with (the ``train_teacher.json`` of its folder or
    run); empty when no record is found."""
    path = resolve_asset_path(run_or_checkpoint)
    for folder in (path, path.parent, path.parent.parent):
        record = folder / "train_teacher.json"
        if record.is_file():
            return json.loads(record.read_text())
    return {}


def load_teacher(
    run_or_checkpoint: str | Path, cfg: StreamCharConfig, spec: LatentSpec, use_ema: bool = True
) -> JointDiT:
    """The teacher from a run folder (newest checkpoint) or a checkpoint folder; EMA weights by default."""
    from safetensors.torch import load_file

    path = resolve_asset_path(run_or_checkpoint)  # checkpoints/tiny/teacher works from any directory
    if not (path / "model.safetensors").is_file():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(
                f"No teacher checkpoint in {path}; train one with `streamchar train teacher`."
            )
        path = found[-1]
    _check_trained_window(path, cfg)
    model = build_denoiser(trained_denoiser_section(path, cfg), cfg.timeline, spec)
    name = "ema.safetensors" if use_ema and (path / "ema.safetensors").is_file() else "model.safetensors"
    try:
        weights = load_file(str(path / name))
    except Exception as err:
        raise CheckpointError(
            f"Could not read {path / name} ({err}); the file is damaged, use another checkpoint."
        ) from err
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the configured denoiser ({len(missing)} missing, {len(unexpected)} unexpected tensors); "
            "pass the config it was trained with."
        )
    return model.eval()


# -- the orchestrator's unit LM -------------------------------------------------------------------------------
def load_vocab(folder: str | Path) -> UnitVocabulary:
    """The unit vocabulary of a saved orchestrator, checked against its tokenizer."""
    return _load_vocab(Path(folder))[0]


def _load_vocab(folder: Path) -> tuple[UnitVocabulary, dict]:
    from transformers import AutoTokenizer

    if not (folder / "config.json").is_file():
        raise OrchestratorCheckpointError(
            f"{folder} holds no orchestrator (no config.json); train one with `streamchar train orchestrator` "
            "or set orchestrator.path to the folder it wrote."
        )
    sidecar = json.loads((folder / SIDECAR).read_text()) if (folder / SIDECAR).is_file() else {}
    vocab = UnitVocabulary(F0Buckets(**sidecar["f0_buckets"]) if "f0_buckets" in sidecar else None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:
        raise OrchestratorCheckpointError(
            f"Could not load the tokenizer in {folder} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "the folder is damaged or incomplete, so copy it again or retrain."
        ) from err
    vocab.check_tokenizer(tokenizer, folder)
    return vocab, sidecar


def load_unit_lm(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, vocab, sidecar) from a folder written by :func:`~streamchar.orchestrator.model.save_unit_lm`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    vocab, sidecar = _load_vocab(folder)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 13 MB model needs no progress bar in every command's output
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except Exception as err:
        raise OrchestratorCheckpointError(
            f"Could not load the orchestrator in {folder} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "the folder is damaged or incomplete, so copy it again or retrain."
        ) from err
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if model.config.vocab_size != len(vocab):
        raise OrchestratorCheckpointError(
            f"The orchestrator in {folder} has {model.config.vocab_size} tokens but the unit vocabulary has "
            f"{len(vocab)}; it was made by another StreamChar version, so retrain it."
        )
    return model.to(device).eval(), vocab, sidecar


def orchestrator_folder(cfg, path: str | Path | None = None) -> Path:
    """The unit LM's folder: ``path``, else ``orchestrator.path``; a clear error when neither is set."""
    folder = path or cfg.orchestrator.path
    if folder is None:
        raise OrchestratorCheckpointError("No orchestrator checkpoint configured; set orchestrator.path.")
    return resolve_asset_path(folder)


def load_orchestrator(cfg, path: str | Path | None = None, voice_prompts: dict | None = None,
                      device: str | None = None) -> Orchestrator:  # fmt: skip
    """The orchestrator of ``cfg.orchestrator`` with its unit LM from ``path`` (default ``orchestrator.path``):
    loaded here on ``device`` (default ``orchestrator.device``), or served by vLLM (``orchestrator.backend``)."""
    ocfg = cfg.orchestrator
    folder = orchestrator_folder(cfg, path)
    device = device or ocfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ocfg.backend == "vllm":
        vocab = load_vocab(folder)
        backend = make_backend("vllm", path=str(folder), temperature=ocfg.temperature, seed=ocfg.seed)
        return Orchestrator.over_backend(cfg, backend, vocab, voice_prompts)
    model, vocab, _ = load_unit_lm(folder, device=device)
    return Orchestrator.from_config(cfg, (model, vocab), voice_prompts)


# -- priors -------------------------------------------------------------------------------------------------
def save_prior(
    model: torch.nn.Module, kind: str, kwargs: dict, folder: str | Path, extra: dict | None = None
) -> Path:
    """Write a prior folder: ``model.safetensors`` (float32) and ``prior.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))  # fmt: skip
    record = {"kind": kind, "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
              **(extra or {})}  # fmt: skip
    (folder / PRIOR_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return folder


def prior_folder(path: str | Path) -> Path:
    """A prior folder, or a training run's export (``RUN/final``)."""
    folder = resolve_asset_path(path)
    if not (folder / PRIOR_RECORD).is_file() and (folder / "final" / PRIOR_RECORD).is_file():
        folder = folder / "final"
    return folder


def load_prior(path: str | Path, kind: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The ``audio`` (:class:`AcousticPrior`) or ``video`` (:class:`VideoPrior`) prior in ``path``, in eval mode."""
    from safetensors.torch import load_file

    folder = prior_folder(path)
    record_path = folder / PRIOR_RECORD
    if not record_path.is_file():
        raise LoadError(
            f"No trained {kind} prior in {folder}; train one with `streamchar train prior --which {kind}` or set "
            f"prior.{kind}_path."
        )
    try:
        record = json.loads(record_path.read_text())
        weights = load_file(str(folder / "model.safetensors"))
    except Exception as err:
        raise LoadError(
            f"The prior in {folder} is damaged ({err}); retrain it or restore the folder."
        ) from err
    if record.get("kind") != kind:
        raise LoadError(
            f"{folder} holds a {record.get('kind')} prior, not a {kind} prior; check prior.{kind}_path."
        )
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in record["arch"].items()}
    model = PRIOR_CLASSES[kind](**arch)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise LoadError(
            f"The weights in {folder} do not fit the {kind} prior its {PRIOR_RECORD} describes ({len(missing)} "
            f"missing, {len(unexpected)} unexpected tensors); retrain it or restore the folder."
        )
    return model.to(device).eval().requires_grad_(False)


def load_priors(cfg, device: torch.device | str = "cpu"):
    """Both frozen priors (:class:`~streamchar.denoiser.prior.Priors`) at ``prior.audio_path`` / ``prior.video_path``."""
    from streamchar.denoiser.prior import Priors

    if not cfg.prior.audio_path or not cfg.prior.video_path:
        raise LoadError(
            "A residual denoiser refines the priors' means; set prior.audio_path and prior.video_path."
        )
    return Priors(load_prior(cfg.prior.audio_path, "audio"), load_prior(cfg.prior.video_path, "video")).to(
        device
    )


# -- trained instruments (the phoneme reader, the evaluation suite's encoders) ----------------------------
class InstrumentError(FileNotFoundError):
    """A missing or unusable instrument folder; the message says what to do."""


def read_instrument(folder: str | Path, what: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(constructor config, weights, scores)`` of an instrument folder (``model.safetensors``, ``config.json``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise InstrumentError(
                f"{folder / name} not found; train the {what} with `streamchar eval train {folder.name}` "
                "or pass the folder that holds it."
            )
    try:
        meta = json.loads((folder / "config.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
    except Exception as err:
        raise InstrumentError(
            f"{folder} is corrupt ({err}); retrain it with `streamchar eval train`."
        ) from err
    return meta["config"], weights, meta.get("scores", {})


def load_weights(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], folder: str | Path
) -> torch.nn.Module:
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise InstrumentError(
            f"{folder} does not fit this StreamChar's instrument ({str(err).splitlines()[0]}); retrain it."
        ) from err
    return model.eval().requires_grad_(False)


def load_instrument(folder: str | Path, model_class: type[torch.nn.Module], what: str) -> torch.nn.Module:
    """The instrument in ``folder``, built as ``model_class(**its config)``, frozen, in eval mode."""
    config, weights, _ = read_instrument(folder, what)
    return load_weights(model_class(**config), weights, folder)


def load_phoneme_recognizer(folder: str | Path) -> Recognizer:
    """The CTC recognizer in ``folder`` (no lexicon: it reads phonemes; evaluation adds the words)."""
    config, weights, scores = read_instrument(folder, "recognizer")
    model = load_weights(CTCRecognizer(**config["model"]), weights, folder)
    return Recognizer(model, None, config.get("word_penalty", 1.0), scores)


def load_phoneme_reader(cfg, audio_codec) -> LatentPhonemeReader | None:
    """The reader that realigns the pointer (``engine.phoneme_reader``), warmed up; None, with a warning,
    when that folder holds no recognizer."""
    folder = resolve_asset_path(cfg.engine.phoneme_reader)
    if not (folder / "config.json").is_file():
        logger.warning("no recognizer at engine.phoneme_reader=%s; the pointer is not realigned (train one "
                       "with `streamchar eval train recognizer`, or set engine.realign=false)", folder)  # fmt: skip
        return None
    reader = LatentPhonemeReader(load_phoneme_recognizer(folder), audio_codec)
    tokens = cfg.timeline.chunk_audio_tokens
    silence = np.zeros(cfg.timeline.audio_tokens_to_samples(tokens), np.float32)
    reader.wave_log_probs(silence, tokens)  # warm-up
    return reader
