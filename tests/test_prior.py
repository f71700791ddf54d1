"""The priors (denoiser/prior.py), their mouth weighting, loading and trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamchar.denoiser.objective import mouth_weight_map, weighted_video_error
from streamchar.denoiser.prior import AcousticPrior, VideoPrior

from .conftest import TINY_CORPUS_OVERRIDES


def _acoustic(**kw) -> AcousticPrior:
    torch.manual_seed(0)
    prior = AcousticPrior(
        num_units=40, audio_dim=12, context=6, width=32, speaker_dim=8, dilations=(1, 2, 4), **kw
    )
    for (
        block
    ) in prior.blocks:  # the FiLM starts at zero (unmodulated); give it weights so the speaker matters
        torch.nn.init.normal_(block.film.weight, std=0.2)
    return prior.eval()


def _voice(seed: int, b: int = 2, r: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, r, 12, generator=g), torch.ones(b, r, dtype=torch.bool)


def test_acoustic_prior_shapes_and_chunk_mean():
    prior = _acoustic()
    units, speaking = torch.randint(0, 40, (2, 6 + 5)), torch.randint(0, 2, (2, 6 + 5))
    mu = prior.chunk_mean(units, speaking, *_voice(0))
    assert mu.shape == (2, 5, 12)
    assert torch.equal(mu, prior(units, speaking, *_voice(0))[:, 6:])
    with pytest.raises(ValueError, match="context tokens"):
        prior.chunk_mean(units[:, :6], speaking[:, :6], *_voice(0))


def test_acoustic_prior_streamed_chunks_equal_offline_and_never_look_past_the_chunk():
    """Chunk by chunk with the last ``context`` units carried over equals the offline pass over the session's
    windows; a chunk's means ignore every unit after the chunk and before its context."""
    prior, L, chunks = _acoustic(), 5, 4
    g = torch.Generator().manual_seed(1)
    units, speaking = (
        torch.randint(0, 40, (2, L * chunks), generator=g),
        torch.randint(0, 2, (2, L * chunks), generator=g),
    )
    voice = _voice(2)
    # offline: every chunk's window cut from the padded session
    padded_units, padded_speaking = prior.pad_context(units, speaking)
    offline = torch.cat([prior.chunk_mean(padded_units[:, k * L : k * L + 6 + L],
                                          padded_speaking[:, k * L : k * L + 6 + L], *voice)
                         for k in range(chunks)], dim=1)  # fmt: skip
    # streamed: a context buffer that starts as padding
    ctx_units, ctx_speaking = prior.pad_context(units[:, :0], speaking[:, :0])
    streamed = []
    for k in range(chunks):
        u, s = units[:, k * L : (k + 1) * L], speaking[:, k * L : (k + 1) * L]
        streamed.append(
            prior.chunk_mean(torch.cat([ctx_units, u], 1), torch.cat([ctx_speaking, s], 1), *voice)
        )
        ctx_units, ctx_speaking = (
            torch.cat([ctx_units, u], 1)[:, -6:],
            torch.cat([ctx_speaking, s], 1)[:, -6:],
        )
    assert torch.equal(torch.cat(streamed, 1), offline)
    # the future and the distant past do not reach a chunk
    window_units = padded_units[:, 2 * L : 2 * L + 6 + L].clone()
    changed = padded_units.clone()
    changed[:, 3 * L + 6 :] = (changed[:, 3 * L + 6 :] + 7) % 40  # everything after chunk 2
    changed[:, : 2 * L] = (changed[:, : 2 * L] + 3) % 40  # everything before chunk 2's context
    assert torch.equal(changed[:, 2 * L : 2 * L + 6 + L], window_units)


def test_acoustic_prior_uses_the_speaker():
    prior = _acoustic()
    units, speaking = torch.randint(0, 40, (2, 11)), torch.ones(2, 11, dtype=torch.long)
    a = prior.chunk_mean(units, speaking, *_voice(0))
    b = prior.chunk_mean(units, speaking, *_voice(5))
    assert (a - b).abs().mean() > 1e-3
    # no valid reference token: the learned null speaker, whatever the (invalid) latents hold
    voice, valid = _voice(0)
    none = prior.chunk_mean(units, speaking, voice, torch.zeros_like(valid))
    assert torch.equal(none, prior.chunk_mean(units, speaking, voice * 3, torch.zeros_like(valid)))


def test_negative_units_are_the_padding_unit():
    prior = _acoustic()
    units, speaking = torch.randint(0, 40, (1, 11)), torch.zeros(1, 11, dtype=torch.long)
    units[:, :3] = -1
    explicit = units.clone()
    explicit[:, :3] = 40
    assert torch.equal(prior(units, speaking, *_voice(0, b=1)), prior(explicit, speaking, *_voice(0, b=1)))


def test_factorised_units_add_phoneme_and_bucket_embeddings():
    """With ``unit_buckets`` the first layer's input is unit + phoneme + bucket embedding (naive loop below),
    padding reads the extra phoneme row with bucket 0, and a bucket count that does not divide is refused."""
    prior = _acoustic(unit_buckets=4)  # 40 units = 10 phonemes x 4 buckets
    units = torch.tensor([[0, 5, 7, 39, -1]])
    got = prior.unit_embedding(torch.where(units < 0, 40, units))
    got = got + prior.phoneme_embedding(torch.where(units < 0, 40, units) // 4)
    got = got + prior.bucket_embedding(torch.where(units < 0, 40, units) % 4)
    for i, u in enumerate([0, 5, 7, 39, 40]):
        naive = prior.unit_embedding.weight[u] + prior.phoneme_embedding.weight[u // 4]
        naive = naive + prior.bucket_embedding.weight[u % 4]
        assert torch.allclose(got[0, i], naive)
    assert prior.phoneme_embedding.num_embeddings == 11  # 10 phonemes + padding
    # the embeddings reach the output: changing the phoneme row of units 20..23 moves the means
    speaking = torch.ones(1, 11, dtype=torch.long)
    units = torch.tensor([[1, 2, 3, 9, 10, 11, 21, 22, 23, 1, 2]])
    before = prior(units, speaking, *_voice(0, b=1))
    with torch.no_grad():
        prior.phoneme_embedding.weight[5] += 1.0  # units 20..23
    after = prior(units, speaking, *_voice(0, b=1))
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match="divide"):
        _acoustic(unit_buckets=3)


def test_dropout_acts_in_training_only():
    prior = _acoustic(dropout=0.5)
    units, speaking = torch.randint(0, 40, (2, 11)), torch.randint(0, 2, (2, 11))
    voice = _voice(0)
    assert torch.equal(prior(units, speaking, *voice), prior(units, speaking, *voice))  # eval: deterministic
    prior.train()
    torch.manual_seed(1)
    a = prior(units, speaking, *voice)
    assert not torch.equal(a, prior(units, speaking, *voice))
    assert torch.equal(_acoustic(dropout=0.5)(units, speaking, *voice), _acoustic()(units, speaking, *voice))


def test_phonetic_loss_against_a_naive_reference():
    """The probe reads each chunk token with its neighbours (ends repeated), as FramePhonemeProbe does on one
    clip; the loss is the mean cross-entropy against the units' phonemes over the chunk's valid tokens only."""
    from streamchar.data.phonemes import PHONEMES
    from streamchar.orchestrator.phoneme_probe import FramePhonemeProbe
    from streamchar.training.prior import phonetic_loss

    torch.manual_seed(0)
    buckets = 3
    prior = AcousticPrior(num_units=len(PHONEMES) * buckets, audio_dim=12, context=4, width=16, speaker_dim=8,
                          dilations=(1,), unit_buckets=buckets)  # fmt: skip
    probe = FramePhonemeProbe(12, context=2, hidden=16)
    t = 4 + 6
    units = torch.randint(0, prior.num_units, (2, t))
    units[0, :2] = -1  # before the clip's start
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, -2:] = False  # after the clip's end
    mu = torch.randn(2, t, 12)
    got = phonetic_loss(probe, prior, mu, {"units": units, "audio_mask": mask})
    naive = torch.stack([torch.stack([torch.cat([mu[b, min(max(i + k, 0), t - 1)] for k in range(-2, 3)])
                                      for i in range(t)]) for b in range(2)])  # fmt: skip
    assert torch.equal(probe._windows(mu), naive)  # a batch's windows: each item's, ends repeated
    for b in range(2):
        logits = probe(mu[b])  # [T, P], the probe's own windows over the whole item
        terms = [
            torch.nn.functional.cross_entropy(logits[i : i + 1], units[b, i : i + 1] // buckets)
            for i in range(4, t)
            if mask[b, i] and units[b, i] >= 0
        ]
        torch.testing.assert_close(got[b], torch.stack(terms).mean())


def test_factorised_units_come_from_the_config_and_the_unit_set():
    from streamchar.config import load_config
    from streamchar.data.phonemes import PHONEMES, F0Buckets, num_units
    from streamchar.denoiser.build import LatentSpec, acoustic_prior_kwargs

    spec = LatentSpec(latent_channels=8, latent_size=16, audio_dim=320, num_units=num_units(F0Buckets()))
    cfg = load_config("tiny")
    assert acoustic_prior_kwargs(cfg.prior.audio, cfg.timeline, spec)["unit_buckets"] == F0Buckets().size
    assert spec.num_units == len(PHONEMES) * F0Buckets().size
    with pytest.raises(ValueError, match="whole number"):
        acoustic_prior_kwargs(cfg.prior.audio, cfg.timeline, LatentSpec(8, 16, 320, spec.num_units + 1))
    joint = load_config("tiny", ["prior.audio.factorised_units=false"])
    assert "unit_buckets" not in acoustic_prior_kwargs(joint.prior.audio, joint.timeline, spec)


def test_video_prior_starts_as_the_last_latent_and_reads_the_audio():
    torch.manual_seed(0)
    prior = VideoPrior(latent_channels=4, audio_dim=12, audio_per_frame=1, motion_audio=2, channels=(8, 8, 16),
                       audio_width=16).eval()  # fmt: skip
    ref, last = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    audio = torch.randn(2, 2 + 5, 12)
    mu = prior(ref, last, audio)
    assert mu.shape == (2, 4, 5, 8, 8)
    assert torch.equal(
        mu, last[:, :, None].expand_as(mu)
    )  # zero-initialised output: "repeat the last latent"
    torch.nn.init.normal_(prior.out.weight, std=0.1)
    for block in (prior.dec1, prior.dec2, prior.dec3):
        torch.nn.init.normal_(block.film.weight, std=0.1)
    a, b = prior(ref, last, audio), prior(ref, last, audio + 1)
    assert (a - b).abs().mean() > 1e-4
    # the audio of the motion frames is context; each frame reads its own token (one per latent frame)
    c = audio.clone()
    c[:, 2 + 4] += 5.0  # the last frame's token
    diff = (prior(ref, last, c) - a).abs().flatten(3).mean((0, 1, 3))
    assert diff[-1] > diff[0]


def test_mouth_weight_map_against_a_naive_reference():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(2, 3, 2, generator=g) * 0.6
    boxes = torch.cat([lo, lo + 0.05 + torch.rand(2, 3, 2, generator=g) * 0.35], -1)  # x0, y0, x1, y1
    boxes = boxes[..., [0, 1, 2, 3]]
    has = torch.tensor([True, False])
    got = mouth_weight_map(boxes, has, (4, 5), 4.0)
    expected = torch.ones(2, 3, 4, 5)
    for b in range(2):
        for k in range(3):
            x0, y0, x1, y1 = boxes[b, k].tolist()
            for i in range(4):
                for j in range(5):
                    ox = max(0.0, min(x1, (j + 1) / 5) - max(x0, j / 5)) * 5
                    oy = max(0.0, min(y1, (i + 1) / 4) - max(y0, i / 4)) * 4
                    if has[b]:
                        expected[b, k, i, j] = 1 + 3.0 * ox * oy
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(mouth_weight_map(boxes, has, (4, 5), 1.0), torch.ones(2, 3, 4, 5))
    # the weighted error keeps its scale: a constant error is itself whatever the weights
    err = torch.full((2, 6, 3, 4, 5), 0.25)
    assert torch.allclose(weighted_video_error(err, got), torch.full((2,), 0.25))
    # and weighs the box: an error only inside the box counts more with a higher weight
    inside = (mouth_weight_map(boxes, has, (4, 5), 2.0) - 1.0)[:, None].expand(-1, 6, -1, -1, -1)
    assert weighted_video_error(inside, got)[0] > weighted_video_error(inside, torch.ones_like(got))[0]


def test_mouth_contrast_scale_against_a_naive_reference():
    """A window whose mouth box barely changes over its frames gets a larger mouth weight (up to the cap)."""
    from streamchar.training.prior import mouth_contrast_scale, video_errors

    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([0.25, 0.5, 0.75, 0.9]).repeat(3, 4, 1)  # [B=3, L=4, 4]
    has = torch.tensor([True, True, False])
    target = torch.randn(3, 2, 4, 4, 4, generator=g)
    target[1] *= 0.2  # a low-contrast mouth (and face)
    inside = mouth_weight_map(boxes, has, (4, 4), 2.0) - 1.0
    got = mouth_contrast_scale(target, inside, has, cap=3.0)
    own = []
    for b in range(3):
        cells = inside[b].mean(0)
        num = den = 0.0
        for c in range(2):
            for i in range(4):
                for j in range(4):
                    num += float(target[b, c, :, i, j].var()) * float(cells[i, j])
                    den += float(cells[i, j])
        own.append(num / den if den else 0.0)  # no box: not used
    mean = (own[0] + own[1]) / 2
    expected = [min(3.0, max(1.0, (mean / own[b]) ** 0.5)) if has[b] else 1.0 for b in range(3)]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-4)
    assert got[1] > 1.0 and got[0] == 1.0 and got[2] == 1.0
    # the loss uses it: off, it is the plain mouth weighting
    mu = torch.zeros_like(target)
    plain = video_errors(mu, target, boxes, has, 4.0)["weighted"]
    assert torch.allclose(video_errors(mu, target, boxes, has, 4.0, mouth_contrast=0.0)["weighted"], plain)
    scaled = video_errors(mu, target, boxes, has, 4.0, mouth_contrast=3.0)["weighted"]
    assert torch.allclose(scaled[[0, 2]], plain[[0, 2]]) and not torch.allclose(scaled[1], plain[1])


def test_mouth_box_reaches_the_latent_cache_and_the_windows(cache):
    from streamchar.data.latents import LatentCache
    from streamchar.data.windows import WindowDataset

    lc = LatentCache(cache)
    entry = lc.entries()[0]
    boxes = lc.tensor(entry, "gt/mouth_box")
    assert boxes.shape == (entry["latent_frames"], 4)
    assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())
    window = WindowDataset(lc, "train", 8, unit_context=5)[3]
    assert window["mouth_box"].shape == (lc.timeline.chunk_latent_frames, 4) and bool(window["has_mouth_box"])
    assert window["context_units"].shape == (5,) and window["context_speaking"].shape == (5,)


def _prior_config(tmp_path, *extra):
    from streamchar.config import load_config

    return load_config(None, TINY_CORPUS_OVERRIDES + [
        "prior.audio.width=32", "prior.audio.speaker_dim=8", "prior.audio.dilations=[1,2]",
        "prior.video.channels=[8,8,16]", "prior.video.audio_width=16",
        "train.prior_audio.steps=4", "train.prior_audio.batch_size=4", "train.prior_audio.eval_every=2",
        "train.prior_audio.ckpt_every=2", "train.prior_audio.eval_windows=6", "train.prior_audio.log_every=1",
        "train.prior_video.steps=2", "train.prior_video.batch_size=2", "train.prior_video.eval_every=2",
        "train.prior_video.ckpt_every=1", "train.prior_video.eval_windows=4", "train.prior_video.log_every=1",
        "train.prior_video.rollout_eval_chunks=2",
        "train.prior_audio.mixed_precision=no", "train.prior_video.mixed_precision=no",
        "train.prior_audio.phoneme_probe_steps=5", f"prior.audio_path={tmp_path / 'audio'}", *extra])  # fmt: skip


def test_prior_trainers_resume_exactly_export_and_load(cache, tmp_path):
    from safetensors.torch import load_file

    from streamchar.checkpoints import list_checkpoints
    from streamchar.loaders import LoadError, load_prior
    from streamchar.training.prior import _load_init, train_prior

    cfg = _prior_config(tmp_path)
    straight = train_prior(cfg, "audio", cache, tmp_path / "straight", progress=False)
    first = train_prior(cfg, "audio", cache, tmp_path / "audio", max_steps=2, progress=False)
    assert first["step"] == 2 and not first["finished"]
    second = train_prior(cfg, "audio", cache, tmp_path / "audio", progress=False)
    assert second["finished"] and straight["finished"]
    a = load_file(str(list_checkpoints(tmp_path / "straight")[-1] / "ema.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "audio")[-1] / "ema.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = json.loads((tmp_path / "audio" / "curve.json").read_text())
    assert [c["step"] for c in curve] == [2, 4] and all(np.isfinite(c["l1"]) for c in curve)
    prior = load_prior(tmp_path / "audio", "audio")  # the run folder finds its export
    assert prior.context == 16 and not prior.training
    with pytest.raises(LoadError, match="not a video prior"):
        load_prior(tmp_path / "audio", "video")
    with pytest.raises(LoadError, match="train one"):
        load_prior(tmp_path / "nothing", "audio")
    # the video prior reads the trained acoustic prior
    video = train_prior(cfg, "video", cache, tmp_path / "video", progress=False)
    assert video["finished"] and {"mse", "mouth", "mse_given_speech", "copy_last"} <= set(video["heldout"])
    assert load_prior(tmp_path / "video", "video").latent_channels == 4
    assert np.isfinite(video["heldout"]["rollout_last"])  # the held-out sessions' drift is measured
    # the rollout fine-tune starts from the trained prior and trains on its own sessions
    tuned_cfg = _prior_config(
        tmp_path, "train.prior_video.rollout_chunks=2", f"train.prior_video.init={tmp_path / 'video'}"
    )
    start = load_prior(tmp_path / "video", "video")
    for p in start.parameters():
        p.data.normal_()  # forget the weights, then start from them again
    _load_init(start, str(tmp_path / "video"))
    trained = load_prior(tmp_path / "video", "video")
    assert all(
        torch.equal(a, b)
        for a, b in zip(start.state_dict().values(), trained.state_dict().values(), strict=True)
    )
    tuned = train_prior(tuned_cfg, "video", cache, tmp_path / "tuned", progress=False)
    assert tuned["finished"] and np.isfinite(tuned["heldout"]["rollout_last"])
    noisy_cfg = _prior_config(
        tmp_path, "train.prior_video.last_noise=0.5", f"train.prior_video.init={tmp_path / 'video'}"
    )
    noisy = train_prior(noisy_cfg, "video", cache, tmp_path / "noisy", progress=False)
    assert noisy["finished"] and np.isfinite(noisy["heldout"]["mse"])
    tuned_cfg.prior.video.channels = (8, 16, 16)
    with pytest.raises(ValueError, match="another architecture"):
        train_prior(tuned_cfg, "video", cache, tmp_path / "other", progress=False)
    (tmp_path / "video" / "final" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(LoadError, match="damaged"):
        load_prior(tmp_path / "video", "video")
    with pytest.raises(ValueError, match="Unknown prior"):
        train_prior(cfg, "both", cache, tmp_path / "x", progress=False)


def test_the_phonetic_loss_trains_beside_l1_with_its_probe_recorded(cache, tmp_path):
    from streamchar.training.prior import train_prior

    cfg = _prior_config(tmp_path, "train.prior_audio.phoneme_weight=0.1")
    summary = train_prior(cfg, "audio", cache, tmp_path / "phonetic", progress=False)
    assert summary["finished"] and np.isfinite(summary["heldout"]["l1"])
    assert 0 <= summary["phoneme_probe"]["train_accuracy"] <= 1  # the probe it was trained against
    plain = train_prior(_prior_config(tmp_path, "train.prior_audio.phoneme_weight=0"), "audio", cache,
                        tmp_path / "plain", progress=False)  # fmt: skip
    assert "phoneme_probe" not in plain


def test_video_rollout_losses_follow_the_engines_loop(cache):
    """The rollout the video prior trains on against a naive loop over ``Priors`` as the engine calls it:
    chunk 0 from the reference and silence, each later chunk from the last latent and audio made before it."""
    from streamchar.data.latents import LatentCache
    from streamchar.data.windows import RolloutDataset
    from streamchar.denoiser.prior import Priors
    from streamchar.training.prior import video_errors, video_rollout_losses

    lc = LatentCache(cache)
    tl = lc.timeline
    batch = torch.utils.data.default_collate([RolloutDataset(lc, "train", 2, 4)[i] for i in range(2)])
    assert batch["chunk_video"].shape[:3] == (2, 2, 4) and batch["chunk_mouth_box"].shape == (
        2,
        2,
        tl.chunk_latent_frames,
        4,
    )
    torch.manual_seed(1)
    audio_dim = batch["chunk_audio"].shape[-1]
    audio = AcousticPrior(num_units=int(batch["chunk_units"].max()) + 1, audio_dim=audio_dim, context=5, width=16,
                          speaker_dim=8, dilations=(1, 2)).eval()  # fmt: skip
    per_frame = tl.chunk_audio_tokens // tl.chunk_latent_frames
    video = VideoPrior(latent_channels=4, audio_dim=audio_dim, audio_per_frame=per_frame,
                       motion_audio=tl.motion_audio_tokens, channels=(8, 8, 16), audio_width=16)  # fmt: skip
    torch.nn.init.normal_(video.out.weight, std=0.1)  # not the identity: the fed-back latent matters
    priors = Priors(audio, video)
    own = torch.tensor([False, True])
    losses = video_rollout_losses(video, audio, batch, 3.0, own)

    reference = batch["ref_image"][:, :, 0]
    context = (torch.full((2, 5), -1), torch.zeros(2, 5, dtype=torch.long))
    last, motion_audio = reference, torch.zeros(2, tl.motion_audio_tokens, audio_dim)
    for r in range(2):
        units = torch.cat([context[0], batch["chunk_units"][:, r]], 1)
        speaking = torch.cat([context[1], batch["chunk_speaking"][:, r]], 1)
        mu_audio = priors.audio_means(units, speaking, batch["ref_voice"], batch["ref_voice_mask"])
        mu_audio[1] = batch["chunk_audio"][1, r]  # the second session is audio-driven
        mu_video = priors.video_means(reference, last, motion_audio, mu_audio)
        naive = video_errors(
            mu_video, batch["chunk_video"][:, r], batch["chunk_mouth_box"][:, r], batch["has_mouth_box"], 3.0
        )
        for key in ("weighted", "mse", "mouth"):
            torch.testing.assert_close(losses[key][:, r], naive[key])
        context = (units[:, -5:], speaking[:, -5:])
        last, motion_audio = mu_video[:, :, -1], mu_audio[:, -tl.motion_audio_tokens :]
    assert not torch.allclose(losses["mse"][:, 0], losses["mse"][:, 1])


def test_last_noise_perturbs_only_what_the_video_prior_reads(cache):
    """With ``last_noise`` the prior reads a perturbed last motion latent and is still scored on the clean chunk."""
    from streamchar.data.latents import LatentCache
    from streamchar.data.windows import WindowDataset
    from streamchar.training.prior import video_loss, video_prior_inputs

    lc = LatentCache(cache)
    batch = torch.utils.data.default_collate(
        [WindowDataset(lc, "train", 4, first_chunk_prob=0.0)[i] for i in range(2)]
    )
    tl = lc.timeline
    prior = VideoPrior(latent_channels=4, audio_dim=batch["audio"].shape[-1],
                       audio_per_frame=tl.chunk_audio_tokens // tl.chunk_latent_frames,
                       motion_audio=tl.motion_audio_tokens, channels=(8, 8, 16), audio_width=16).eval()  # fmt: skip
    reference, last, audio = video_prior_inputs(batch)
    noise = 0.3 * torch.randn_like(last)
    got = video_loss(prior, batch, audio, 1.0, noise)["mse"]
    # the zero-initialised prior repeats the latent it reads: the perturbed one, against the clean chunk
    naive = ((last + noise)[:, :, None] - batch["video"]).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(got, naive)
    clean = video_loss(prior, batch, audio, 1.0)["mse"]
    torch.testing.assert_close(clean, (last[:, :, None] - batch["video"]).pow(2).flatten(1).mean(1))


def test_last_perturbation_against_a_naive_reference():
    """Noise of a per-window sd up to ``noise`` plus a move toward the next window's last latent by a per-window
    fraction up to ``mix``, drawn in that order from the generator; windows without motion get nothing."""
    from streamchar.training.prior import last_perturbation

    last = torch.randn(4, 3, 2, 2)
    has_motion = torch.tensor([1, 1, 0, 1])
    assert last_perturbation(last, has_motion, 0.0, 0.0) is None
    got = last_perturbation(last, has_motion, 0.5, 0.3, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sigma = 0.5 * torch.rand(4, generator=g)
    noise = torch.randn(last.shape, generator=g)
    fraction = 0.3 * torch.rand(4, generator=g)
    for i in range(4):
        other = last[(i - 1) % 4]
        want = (
            sigma[i] * noise[i] + fraction[i] * (other - last[i])
            if has_motion[i]
            else torch.zeros_like(last[i])
        )
        torch.testing.assert_close(got[i], want)
    # mix alone moves each window along the line to its neighbour's face, never past it
    only_mix = last_perturbation(last, torch.ones(4), 0.0, 1.0, torch.Generator().manual_seed(0))
    moved = last + only_mix
    for i in range(4):
        step = (moved[i] - last[i]).flatten()
        towards = (last[(i - 1) % 4] - last[i]).flatten()
        ratio = step @ towards / (towards @ towards)
        assert 0.0 <= ratio.item() <= 1.0
        torch.testing.assert_close(step, ratio * towards)
