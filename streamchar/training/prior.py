"""``streamchar train prior --which audio|video``: regression training of the priors the DiT refines.

- **audio** (:class:`~streamchar.denoiser.prior.AcousticPrior`): L1 between the chunk's prior means and its
  normalised audio latents, on windows of ``context + L_a`` tokens that start anywhere in a clip; the
  reference voice comes from another clip of the same character. With ``train.prior_audio.phoneme_weight``
  > 0, also the cross-entropy of a frozen frame phoneme probe (fitted on the cache's ground-truth train
  speech at the start of the run, never on the evaluation recognizer) reading the means, against the units'
  phonemes: L1 spreads its error over every mel bin alike, where intelligibility lives in what tells
  phonemes apart.
- **video** (:class:`~streamchar.denoiser.prior.VideoPrior`): MSE between the chunk's prior means and its video
  latents, weighted ``train.prior_video.mouth_weight`` times inside the mouth box; the chunk audio it reads is
  the trained acoustic prior's output for a fraction of windows and the clip's own speech otherwise, so one
  video prior serves text-driven and audio-driven sessions. A regression network fed its own output drifts;
  ``train.prior_video.last_noise`` (the last motion latent read with noise, the target clean), usually as a
  fine-tune (``train.prior_video.init``) of a prior trained on single windows, teaches it to pull a drifted
  frame back to the reference. ``train.prior_video.rollout_chunks`` trains on sessions rolled out as the engine
  runs it instead; measured, it held long sessions worse (docs/results/formulations.md, "Long sessions").

Both run on :func:`~streamchar.training.loop.run_loop` (accelerate, exact resume, EMA, curves) and export the
EMA weights to ``RUN/final`` (``model.safetensors`` + ``prior.json``), which ``prior.audio_path`` /
``prior.video_path`` and the model folder load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from streamchar.config import StreamCharConfig
from streamchar.data.latents import LatentCache
from streamchar.data.shards import CorpusError
from streamchar.data.windows import RolloutDataset, UnitWindowDataset, WindowDataset
from streamchar.denoiser.build import LatentSpec, acoustic_prior_kwargs, video_prior_kwargs
from streamchar.denoiser.objective import mouth_weight_map, weighted_video_error
from streamchar.denoiser.prior import AcousticPrior, VideoPrior
from streamchar.loaders import load_prior, save_prior
from streamchar.training.loop import LoopSpec, TrainingRun, collate, objective_step, run_loop

logger = logging.getLogger(__name__)
KINDS = ("audio", "video")


def _spec(cache: LatentCache) -> LatentSpec:
    from streamchar.training.teacher import latent_spec_from_cache

    return latent_spec_from_cache(cache)


# -- the acoustic prior --------------------------------------------------------------------------------
def acoustic_loss(prior: AcousticPrior, batch: dict, context_weight: float = 0.0,
                  mu: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Per-window mean absolute error over the valid tokens, ``[B]``: the chunk's, and the context's
    weighted ``context_weight`` (their predictions are never played, but they teach the same mapping).
    ``mu``: the prior's means of the batch when already computed."""
    if mu is None:
        mu = prior(batch["units"], batch["speaking"], batch["ref_voice"], batch["ref_voice_mask"]).float()
    weights = torch.ones(mu.shape[1], device=mu.device)
    weights[: prior.context] = context_weight
    mask = batch["audio_mask"].to(mu.dtype) * weights  # [B, T]
    err = ((mu - batch["audio"]).abs().mean(-1) * mask).sum(1)
    return err / mask.sum(1).clamp_min(1e-6)


def phonetic_loss(probe, prior: AcousticPrior, mu: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-window cross-entropy ``[B]`` of the frozen phoneme ``probe`` reading the means ``mu`` ``[B, T, D_a]``,
    against the phonemes of the window's units, over the chunk's valid tokens (the context's are not played).
    """
    from streamchar.data.phonemes import buckets_per_phoneme

    units = batch["units"]
    logits = probe.to(mu.device)(mu)  # [B, T, P]
    phonemes = units.clamp_min(0) // buckets_per_phoneme(prior.num_units)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), phonemes, reduction="none")  # [B, T]
    mask = batch["audio_mask"] & (units >= 0)
    mask[:, : prior.context] = False
    mask = mask.to(ce.dtype)
    return (ce * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _fit_probe(cache: LatentCache, steps: int, seed: int):
    from streamchar.orchestrator.phoneme_probe import fit_phoneme_probe

    probe, scores = fit_phoneme_probe(cache, steps=steps, seed=seed)
    logger.info("phoneme probe for the phonetic loss (fitted on ground-truth train speech): %s", scores)
    return probe, scores


def train_acoustic_prior(cfg: StreamCharConfig, latents: str | Path, out: str | Path, max_steps: int | None = None,
                         progress: bool = True) -> dict:  # fmt: skip
    tcfg, out = cfg.train.prior_audio, Path(out)
    cache = LatentCache(latents)
    timeline = cache.window_timeline(cfg.timeline)
    kwargs = acoustic_prior_kwargs(cfg.prior.audio, timeline, _spec(cache))
    torch.manual_seed(tcfg.seed)
    model = AcousticPrior(**kwargs)
    train_set = UnitWindowDataset(cache, "train", kwargs["context"], 2**31 - 1, tcfg.seed, timeline)
    split = "test" if cache.entries("test") else "train"
    heldout = UnitWindowDataset(
        cache, split, kwargs["context"], tcfg.eval_windows, tcfg.seed + 7919, timeline
    )
    heldout_batches = [collate([heldout[i] for i in range(s, min(s + 64, len(heldout)))])
                       for s in range(0, len(heldout), 64)]  # fmt: skip

    def batch_at(step: int, rank: int, world: int) -> dict:
        first = (step * world + rank) * tcfg.batch_size
        return collate([train_set[i] for i in range(first, first + tcfg.batch_size)])

    probe, probe_scores = (
        _fit_probe(cache, tcfg.phoneme_probe_steps, tcfg.seed) if tcfg.phoneme_weight > 0 else (None, None)
    )

    def loss_of(prior, batch, generator):
        mu = prior(batch["units"], batch["speaking"], batch["ref_voice"], batch["ref_voice_mask"]).float()
        l1 = acoustic_loss(prior, batch, tcfg.context_weight, mu=mu).mean()
        if probe is None:
            return l1, {}
        ce = phonetic_loss(probe, prior, mu, batch).mean()
        return l1 + tcfg.phoneme_weight * ce, {"l1": l1.item(), "phoneme_ce": ce.item()}

    @torch.no_grad()
    def evaluate(prior, autocast) -> dict:
        total, n = 0.0, 0
        for batch in heldout_batches:
            with autocast():
                total += acoustic_loss(prior, batch).sum().item()
            n += batch["units"].shape[0]
        return {"l1": total / max(1, n)}

    spec = LoopSpec("prior-audio", "train.prior_audio", tcfg, out, {"kind": "audio", **_jsonable(kwargs)},
                    record_name="architecture", settings_name="train_prior", curve_keys=("l1",),
                    summary={"kind": "audio", "heldout_split": split,
                             **({"phoneme_probe": probe_scores} if probe_scores else {})},
                    finish=_exporter("audio", kwargs))  # fmt: skip
    return _train(spec, model, batch_at, loss_of, evaluate, max_steps, progress)


# -- the video prior ----------------------------------------------------------------------------------
def video_prior_inputs(batch: dict, mu_audio: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(reference [B, C, h, w], last [B, C, h, w], audio [B, M_a + L_a, D_a])`` of a window batch: the last
    motion latent (the reference where there is no motion) and ``[motion audio | chunk audio]``, the chunk's
    audio being ``mu_audio`` where given (its rows) and the window's own otherwise."""
    reference = batch["ref_image"][:, :, 0]
    has_motion = batch["has_motion"].to(torch.bool)
    last = torch.where(has_motion.reshape(-1, 1, 1, 1), batch["motion_video"][:, :, -1], reference)
    motion_audio = batch["motion_audio"] * has_motion.to(batch["motion_audio"].dtype).reshape(-1, 1, 1)
    chunk_audio = batch["audio"] if mu_audio is None else mu_audio
    return reference, last, torch.cat([motion_audio, chunk_audio], dim=1)


def acoustic_means(prior: AcousticPrior, batch: dict) -> torch.Tensor:
    """The acoustic prior's chunk means ``[B, L_a, D_a]`` of a window batch (with ``context_units``)."""
    units = torch.cat([batch["context_units"], batch["units"]], dim=1)
    speaking = torch.cat([batch["context_speaking"], batch["speaking"]], dim=1)
    return prior.chunk_mean(units, speaking, batch["ref_voice"], batch["ref_voice_mask"]).float()


def mouth_contrast_scale(target: torch.Tensor, inside: torch.Tensor, has_mouth_box: torch.Tensor,
                         cap: float) -> torch.Tensor:  # fmt: skip
    """Per-window factors ``[B]`` in ``[1, cap]`` for the mouth weight: ``sqrt(mean / own)`` of the target's
    variance over frames inside the mouth box (``inside``: the box fraction ``[B, L, h, w]``), the mean over
    the batch's windows with a box; windows without a box get 1."""
    cells = inside.mean(1)  # [B, h, w]: how much of each cell the box covers over the window
    variance = target.float().var(dim=2)  # [B, C, h, w]
    own = (variance * cells[:, None]).flatten(1).sum(1) / (
        cells.flatten(1).sum(1) * target.shape[1]
    ).clamp_min(1e-6)
    boxed = has_mouth_box.to(own.device).bool()
    if not boxed.any():
        return torch.ones_like(own)
    mean = own[boxed].mean().detach()
    scale = (mean / own.clamp_min(1e-8)).sqrt().clamp(1.0, cap).detach()
    return torch.where(boxed, scale, torch.ones_like(scale))


def video_errors(mu: torch.Tensor, target: torch.Tensor, mouth_box: torch.Tensor, has_mouth_box: torch.Tensor,
                 mouth_weight: float, mouth_contrast: float = 0.0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per-window errors ``[B]`` of means ``mu`` against ``target`` (``[B, C, L, h, w]``; ``mouth_box`` ``[B, L,
    4]``): the mouth-weighted MSE, the plain MSE and the MSE inside the mouth box. With ``mouth_contrast`` > 1,
    each window's mouth weight is scaled by :func:`mouth_contrast_scale`."""
    err = (mu.float() - target).pow(2)  # [B, C, L, h, w]
    size = tuple(err.shape[-2:])
    inside = mouth_weight_map(mouth_box, has_mouth_box, size, 2.0) - 1.0  # the box fraction
    if mouth_contrast > 1:
        weight = mouth_weight * mouth_contrast_scale(target, inside, has_mouth_box, mouth_contrast)
        weights = 1.0 + (weight.reshape(-1, 1, 1, 1) - 1.0) * inside
    else:
        weights = mouth_weight_map(mouth_box, has_mouth_box, size, mouth_weight)
    weighted = weighted_video_error(err, weights)
    mouth = (err * inside[:, None]).flatten(1).sum(1) / (inside.flatten(1).sum(1) * err.shape[1]).clamp_min(
        1e-6
    )
    return {"weighted": weighted, "mse": err.flatten(1).mean(1), "mouth": mouth}


def video_loss(
    prior: VideoPrior,
    batch: dict,
    audio: torch.Tensor,
    mouth_weight: float,
    last_noise: torch.Tensor | None = None,
    mouth_contrast: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Per-window losses ``[B]`` of a window batch (see :func:`video_errors`); ``last_noise`` ``[B, C, h, w]`` is
    added to the last motion latent the prior reads (the target stays the clean chunk)."""
    reference, last, _ = video_prior_inputs(batch)
    if last_noise is not None:
        last = last + last_noise.to(last.device, last.dtype)
    mu = prior(reference, last, audio)
    return video_errors(mu, batch["video"], batch["mouth_box"], batch["has_mouth_box"], mouth_weight,
                        mouth_contrast)  # fmt: skip


def last_perturbation(last: torch.Tensor, has_motion: torch.Tensor, noise: float, mix: float,
                      generator: torch.Generator | None = None) -> torch.Tensor | None:  # fmt: skip
    """What is added to the last motion latents ``last`` ``[B, C, h, w]`` a video prior reads in training (its
    target stays clean), ``None`` when both settings are 0; windows without motion (``has_motion`` 0) get none.

    - ``noise``: Gaussian noise of a standard deviation drawn uniformly up to it per window;
    - ``mix``: a move toward the last latent of the batch's next window (mostly another character's face) by a
      fraction drawn uniformly up to it, the drift a long session shows (a different face it then keeps),
      where noise is only a local, unstructured error.
    """
    if noise <= 0 and mix <= 0:
        return None
    b = last.shape[0]
    moving = has_motion.float().cpu().reshape(-1, 1, 1, 1)
    out = torch.zeros(last.shape)
    if noise > 0:
        sigma = noise * torch.rand(b, generator=generator).reshape(-1, 1, 1, 1)
        out = out + sigma * torch.randn(last.shape, generator=generator)
    if mix > 0:
        fraction = mix * torch.rand(b, generator=generator).reshape(-1, 1, 1, 1)
        cpu = last.detach().float().cpu()
        out = out + fraction * (cpu.roll(1, dims=0) - cpu)
    return out * moving


def video_rollout_losses(prior: VideoPrior, audio_prior: AcousticPrior, batch: dict, mouth_weight: float,
                         own_speech: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per-chunk losses ``[B, R]`` of sessions rolled out as the engine runs the priors alone.

    ``batch`` is a :class:`~streamchar.data.windows.RolloutDataset` batch. Chunk 0 starts from the reference
    with silent motion audio; every later chunk reads the prior's own last latent (detached: each chunk
    learns to make its ground truth from wherever the rollout has drifted) and the end of the audio before
    it. A chunk's audio is the acoustic prior's means over the units so far, or the clip's own speech where
    ``own_speech`` ``[B]`` is True (audio-driven sessions).
    """
    reference, voice, voice_mask = batch["ref_image"][:, :, 0], batch["ref_voice"], batch["ref_voice_mask"]
    b, chunks, tokens = batch["chunk_units"].shape
    context = audio_prior.context
    device = reference.device
    units = torch.cat([torch.full((b, context), -1, dtype=torch.long, device=device),
                       batch["chunk_units"].flatten(1)], 1)  # fmt: skip
    speaking = torch.cat([torch.zeros(b, context, dtype=torch.long, device=device),
                          batch["chunk_speaking"].flatten(1)], 1)  # fmt: skip
    own = torch.zeros(b, dtype=torch.bool, device=device) if own_speech is None else own_speech.to(device)
    last = reference
    motion_audio = torch.zeros(b, prior.motion_audio, prior.audio_dim, device=device)
    losses: dict[str, list[torch.Tensor]] = {"weighted": [], "mse": [], "mouth": []}
    for r in range(chunks):
        window = slice(r * tokens, context + (r + 1) * tokens)
        with torch.no_grad():
            mu_audio = audio_prior.chunk_mean(
                units[:, window], speaking[:, window], voice, voice_mask
            ).float()
        chunk_audio = torch.where(own[:, None, None], batch["chunk_audio"][:, r].float(), mu_audio)
        mu = prior(reference, last, torch.cat([motion_audio, chunk_audio], dim=1))
        parts = video_errors(mu, batch["chunk_video"][:, r], batch["chunk_mouth_box"][:, r],
                             batch["has_mouth_box"], mouth_weight)  # fmt: skip
        for key, value in parts.items():
            losses[key].append(value)
        last = mu[:, :, -1].detach().float()
        motion_audio = chunk_audio[:, chunk_audio.shape[1] - prior.motion_audio :]
    return {key: torch.stack(values, dim=1) for key, values in losses.items()}


def train_video_prior(cfg: StreamCharConfig, latents: str | Path, out: str | Path, max_steps: int | None = None,
                      progress: bool = True) -> dict:  # fmt: skip
    tcfg, out = cfg.train.prior_video, Path(out)
    if cfg.prior.audio_path is None:
        raise ValueError(
            "The video prior reads the acoustic prior's output; set prior.audio_path to a trained one."
        )
    audio_prior = load_prior(cfg.prior.audio_path, "audio")
    cache = LatentCache(latents)
    timeline = cache.window_timeline(cfg.timeline)
    kwargs = video_prior_kwargs(cfg.prior.video, timeline, _spec(cache))
    torch.manual_seed(tcfg.seed)
    model = VideoPrior(**kwargs)
    if tcfg.init:
        _load_init(model, tcfg.init)
    context = audio_prior.context
    rollout = tcfg.rollout_chunks
    if rollout:
        train_set = RolloutDataset(cache, "train", rollout, 2**31 - 1, tcfg.seed, timeline)
    else:
        train_set = WindowDataset(cache, "train", 2**31 - 1, tcfg.seed, tcfg.first_chunk_prob, timeline,
                                  unit_context=context)  # fmt: skip
    split = "test" if cache.entries("test") else "train"
    heldout_rollouts = _rollout_batches(cache, split, tcfg, timeline)
    heldout = WindowDataset(cache, split, tcfg.eval_windows, tcfg.seed + 7919, tcfg.first_chunk_prob, timeline,
                            unit_context=context)  # fmt: skip
    heldout_batches = []
    for s in range(0, len(heldout), 16):
        batch = collate([heldout[i] for i in range(s, min(s + 16, len(heldout)))])
        with torch.no_grad():
            batch["mu_audio"] = acoustic_means(audio_prior, batch)
        heldout_batches.append(batch)

    def batch_at(step: int, rank: int, world: int) -> dict:
        first = (step * world + rank) * tcfg.batch_size
        return collate([train_set[i] for i in range(first, first + tcfg.batch_size)])

    def loss_of(prior, batch, generator):
        use_prior = torch.rand(batch["units"].shape[0], generator=generator) < tcfg.prior_audio_fraction
        if rollout:
            parts = video_rollout_losses(prior, audio_prior.to(batch["units"].device), batch, tcfg.mouth_weight,
                                         ~use_prior)  # fmt: skip
            return parts["weighted"].mean(), {
                "mse": parts["mse"].mean().item(),
                "mse_last_chunk": parts["mse"][:, -1].mean().item(),
            }
        reference, last, own = video_prior_inputs(batch)
        with torch.no_grad():
            mu_audio = acoustic_means(audio_prior.to(batch["units"].device), batch)
        chunk = torch.where(use_prior.to(mu_audio.device)[:, None, None], mu_audio, batch["audio"])
        audio = torch.cat([own[:, : own.shape[1] - chunk.shape[1]], chunk], dim=1)
        noise = last_perturbation(last, batch["has_motion"], tcfg.last_noise, tcfg.last_mix, generator)
        parts = video_loss(prior, batch, audio, tcfg.mouth_weight, noise, tcfg.mouth_contrast)
        return parts["weighted"].mean(), {
            "mse": parts["mse"].mean().item(),
            "mouth": parts["mouth"].mean().item(),
        }

    @torch.no_grad()
    def evaluate(prior, autocast) -> dict:
        totals = {
            "mse": 0.0,
            "mouth": 0.0,
            "mse_given_speech": 0.0,
            "mouth_given_speech": 0.0,
            "copy_last": 0.0,
        }
        n = 0
        for batch in heldout_batches:
            reference, last, own = video_prior_inputs(batch)
            with autocast():
                from_text = video_loss(prior, batch, torch.cat([own[:, : own.shape[1] - batch["mu_audio"].shape[1]],
                                                                batch["mu_audio"]], 1), 1.0)  # fmt: skip
                given = video_loss(prior, batch, own, 1.0)
            totals["mse"] += from_text["mse"].sum().item()
            totals["mouth"] += from_text["mouth"].sum().item()
            totals["mse_given_speech"] += given["mse"].sum().item()
            totals["mouth_given_speech"] += given["mouth"].sum().item()
            totals["copy_last"] += (last[:, :, None] - batch["video"]).pow(2).flatten(1).mean(1).sum().item()
            n += batch["video"].shape[0]
        scores = {k: v / max(1, n) for k, v in totals.items()}
        if heldout_rollouts:  # the session's drift: the first and last chunk of held-out rollouts from text
            per_chunk = torch.cat([video_rollout_losses(prior, audio_prior, batch, 1.0)["mse"]
                                   for batch in heldout_rollouts])  # fmt: skip
            scores["rollout_first"] = per_chunk[:, 0].mean().item()
            scores["rollout_last"] = per_chunk[:, -1].mean().item()
        return scores

    record = {"kind": "video", **_jsonable(kwargs), "mouth_weight": tcfg.mouth_weight,
              "mouth_contrast": tcfg.mouth_contrast,
              "prior_audio_fraction": tcfg.prior_audio_fraction, "rollout_chunks": rollout,
              "last_noise": tcfg.last_noise, "last_mix": tcfg.last_mix,
              "init": tcfg.init}  # fmt: skip
    spec = LoopSpec("prior-video", "train.prior_video", tcfg, out, record, record_name="architecture",
                    settings_name="train_prior",
                    curve_keys=("mse", "mouth", "mse_given_speech", "copy_last", "rollout_first", "rollout_last"),
                    summary={"kind": "video", "heldout_split": split, "mouth_weight": tcfg.mouth_weight},
                    finish=_exporter("video", kwargs, {"mouth_weight": tcfg.mouth_weight}))  # fmt: skip
    return _train(spec, model, batch_at, loss_of, evaluate, max_steps, progress)


def _load_init(model: VideoPrior, init: str) -> None:
    """Start ``model`` from the weights of the trained video prior in ``init``."""
    trained = load_prior(init, "video")
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"The video prior in {init} has another architecture than prior.video describes ({err}); start from a "
            f"prior trained with the same settings or unset train.prior_video.init."
        ) from err
    logger.info("prior-video: starting from the weights in %s", init)


def _rollout_batches(cache: LatentCache, split: str, tcfg, timeline) -> list[dict]:
    """Held-out sessions of ``rollout_eval_chunks`` chunks (none when no clip of the split is that long)."""
    if tcfg.rollout_eval_chunks <= 0:
        return []
    try:
        sessions = RolloutDataset(cache, split, tcfg.rollout_eval_chunks, tcfg.eval_windows // 4, tcfg.seed + 7919,
                                  timeline)  # fmt: skip
    except CorpusError as err:
        logger.warning("prior-video: no held-out rollouts (%s)", err)
        return []
    return [
        collate([sessions[i] for i in range(s, min(s + 8, len(sessions)))])
        for s in range(0, len(sessions), 8)
    ]


def train_prior(cfg: StreamCharConfig, which: str, latents: str | Path, out: str | Path,
                max_steps: int | None = None, progress: bool = True) -> dict:  # fmt: skip
    """Train (or resume) the ``audio`` or ``video`` prior; returns the run's summary."""
    if which not in KINDS:
        raise ValueError(f"Unknown prior '{which}'; use audio or video.")
    trainer = train_acoustic_prior if which == "audio" else train_video_prior
    return trainer(cfg, latents, out, max_steps, progress)


def _train(spec: LoopSpec, model, batch_at, loss_of, evaluate, max_steps: int | None, progress: bool) -> dict:
    """Run the loop on one prior with its EMA (AdamW as every StreamChar trainer sets it)."""
    run = TrainingRun(spec, progress)
    tcfg = spec.settings
    run.setup({"model": model}, {"model": {"lr": tcfg.lr, "weight_decay": tcfg.weight_decay, "betas": (0.9, 0.99)}},
              ema=True)  # fmt: skip
    return run_loop(run, objective_step(run, batch_at, loss_of), evaluate, max_steps)


def _exporter(kind: str, kwargs: dict, extra: dict | None = None):
    """The loop's ``finish``: a finished run's EMA weights go to ``RUN/final``."""

    def finish(run: TrainingRun, summary: dict) -> dict:
        if run.is_main and summary["finished"]:
            save_prior(run.final_model, kind, kwargs, run.out / "final", extra)
        return summary

    return finish


def _jsonable(kwargs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
