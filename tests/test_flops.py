"""The chunk FLOPs model: meta-device counts against analytic counts, totals, the base preset on meta, MFU."""

import math
import resource
import time

import pytest

from streamchar.config import load_config
from streamchar.engine.flops import (
    ChunkFlops,
    audio_decoder_flops,
    chunk_flops,
    dit_flops,
    orchestrator_token_flops,
    prior_flops,
    real_fft_flops,
)
from streamchar.engine.flops_report import format_flops_table
from streamchar.engine.mfu import PEAK_BF16_TFLOPS, mfu, peak_bf16_flops


def _dit_pass(cfg, n_q: int, n_k: int, n_cross_q: int = 0, n_cond: int = 0) -> int:
    """Analytic FLOPs of the DiT's blocks for one item: ``n_q`` tokens attending to ``n_k`` keys, the last
    ``n_cross_q`` of them cross-attending to ``n_cond`` condition tokens. Linear layers cost 2 x weights x
    tokens, attention 4 x n_q x n_k x width; patch embedding, velocity heads, condition and timestep MLPs are left
    out (1% of the tiny preset's cached step)."""
    width, depth = cfg.denoiser.width, cfg.denoiser.depth
    hidden = int(width * cfg.denoiser.mlp_ratio)
    per_layer = (
        2 * (4 * width * width + 2 * width * hidden) * n_q  # qkv, proj, MLP over every token of the pass
        + 2 * (2 * width * width) * n_cross_q  # cross-attention query and output projections
        + 2 * (2 * width * width) * n_cond  # cross-attention keys and values of the conditions
        + 4 * n_q * n_k * width  # self-attention
        + 4 * n_cross_q * n_cond * width  # cross-attention
    )
    return depth * per_layer


def test_dit_meta_counts_match_the_analytic_count():
    cfg = load_config("tiny")
    d = dit_flops(cfg)
    tl = cfg.timeline
    per_frame = (cfg.video_codec.image_size // 8 // cfg.denoiser.patch_size) ** 2
    reference = per_frame + tl.reference_voice_tokens
    sink = tl.sink_latent_frames * per_frame + tl.sink_audio_tokens
    motion = tl.motion_latent_frames * per_frame + tl.motion_audio_tokens
    current, cond = d.tokens_current_chunk, tl.chunk_audio_tokens
    assert current == tl.chunk_latent_frames * per_frame + cond
    assert d.tokens_window == reference + sink + motion + current
    expected = {
        "step_cached": _dit_pass(cfg, current, d.tokens_window, current, cond),
        "step_full_window": _dit_pass(cfg, d.tokens_window, d.tokens_window, current, cond),
        "motion_update": _dit_pass(cfg, motion, reference + sink + motion),
        "reference_and_sink": _dit_pass(cfg, reference, reference) + _dit_pass(cfg, sink, reference + sink),
    }
    for name, analytic in expected.items():
        counted = getattr(d, name)
        assert counted == pytest.approx(analytic, rel=0.03), name


def test_cached_step_is_cheaper_and_the_batch_scales_every_pass():
    cfg = load_config("tiny", ["denoiser.depth=2"])
    one, three = dit_flops(cfg), dit_flops(cfg, batch=3)
    assert 0 < one.step_cached < one.step_full_window
    assert one.motion_update > 0 and one.reference_and_sink > 0
    for name in ("step_cached", "step_full_window", "motion_update", "reference_and_sink"):
        assert getattr(three, name) == 3 * getattr(one, name), name


def test_chunk_totals_add_up_and_the_table_shows_every_component():
    cfg = load_config("tiny")
    r = chunk_flops(cfg, steps=3, guidance_branches=2, characters=1, orchestrator_context=256)
    assert isinstance(r, ChunkFlops) and r.dit.batch == 2
    parts = r.components()
    assert r.total == sum(parts.values())
    assert all(v > 0 for v in parts.values())
    assert r.dit_chunk == 3 * r.dit.step_cached + r.dit.motion_update
    assert parts["dit_denoising"] + parts["dit_motion_update"] == r.dit_chunk
    assert r.orchestrator == round(cfg.timeline.chunk_audio_tokens * 2.5 * r.orchestrator_per_token)
    d = r.to_dict()
    assert d["flops"]["total"] == r.total and d["parameters"]["denoiser"] == r.dit.parameters
    assert d["chunk_seconds"] == pytest.approx(cfg.timeline.chunk_seconds)
    table = format_flops_table(d)
    assert table == format_flops_table(r)
    assert parts["priors"] == prior_flops(cfg)[0] and r.to_dict()["parameters"]["priors"] > 0
    plain = chunk_flops(load_config("tiny", ["denoiser.formulation=plain"]), steps=3, guidance_branches=2)
    assert (
        plain.priors == 0 and plain.dit.step_cached < r.dit.step_cached
    )  # the residual inputs cost a little
    for row in ("Priors", "DiT: 3 denoising steps", "motion update", "Video decoder", "Audio decoder",
                "Orchestrator", "Chunk total", "reference + sink"):  # fmt: skip
        assert row in table
    # the real-time column is GFLOPs per chunk over the playback time
    total_row = next(line for line in table.splitlines() if "Chunk total" in line)
    assert f"{r.total / cfg.timeline.chunk_seconds / 1e12:,.3f}" in total_row
    assert f"{r.total / 2.0 / 1e12:,.3f}" in format_flops_table(r, chunk_seconds=2.0)


def test_audio_decoder_counts_match_the_closed_form():
    cfg = load_config("tiny")
    ac, tl = cfg.audio_codec, cfg.timeline
    matmul, fft = audio_decoder_flops(cfg, context_tokens=4, batch=2)
    frames = (4 + tl.chunk_audio_tokens) * (tl.samples_per_audio_token // ac.hop_length) + 1
    bins = ac.n_fft // 2 + 1
    # pseudo-inverse and numerator, then two products per NNLS update
    assert matmul == 2 * (2 + 2 + 4 * ac.mel_inversion_iters) * bins * ac.n_mels * frames
    assert real_fft_flops(1024) == 2.5 * 1024 * 10
    assert fft == round(2 * (2 * ac.griffin_lim_iters + 1) * frames * 2.5 * ac.n_fft * math.log2(ac.n_fft))
    with pytest.raises(ValueError, match="mel audio codec only"):
        audio_decoder_flops(load_config("tiny", ["audio_codec.kind=encodec"]), 4)


def test_orchestrator_token_matches_the_analytic_count():
    from streamchar.orchestrator.text import UnitVocabulary

    cfg = load_config("tiny")
    o, vocab = cfg.orchestrator, len(UnitVocabulary())
    context = 300
    flops, parameters = orchestrator_token_flops(cfg, context)
    kv_width = o.kv_heads * (o.hidden_size // o.heads)
    # q and o projections, k and v (grouped-query), gate / up / down of the MLP
    layer_weights = (
        2 * o.hidden_size**2 + 2 * o.hidden_size * kv_width + 3 * o.hidden_size * o.intermediate_size
    )
    assert parameters == pytest.approx(
        o.layers * layer_weights + vocab * o.hidden_size, rel=0.01
    )  # tied embeddings
    attention = 4 * (context + 1) * o.hidden_size  # the new token over the cache and itself
    analytic = o.layers * (2 * layer_weights + attention) + 2 * vocab * o.hidden_size  # + the logits
    assert flops == pytest.approx(analytic, rel=0.01)


def test_base_dit_is_counted_on_meta_fast_and_without_memory():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    d = dit_flops(load_config("base"))
    elapsed = time.perf_counter() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert 1.2e9 < d.parameters < 1.4e9  # ~1.3B
    assert elapsed < 60, f"counting took {elapsed:.0f} s"
    assert grown_mib < 500, f"counting grew the peak memory by {grown_mib:.0f} MiB (fp32 weights are 5 GiB)"
    # the linear layers alone cost 2 x (almost all) parameters per current-chunk token
    assert d.step_cached > 2 * 0.8 * d.parameters * d.tokens_current_chunk


def test_peak_lookup_and_mfu():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_bf16_flops("nvidia l40s") == 362e12
    assert peak_bf16_flops("NVIDIA RTX A1000") is None  # not an A100
    assert peak_bf16_flops("Intel(R) Xeon(R) Platinum 8480+") is None
    assert peak_bf16_flops("cpu") is None
    assert all(v > 0 for v in PEAK_BF16_TFLOPS.values())
    assert mfu(0.5 * 989e12, 1.0, 989e12) == pytest.approx(0.5)
    assert mfu(1e12, 0.01, 1e15) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="seconds"):
        mfu(1e12, 0.0, 989e12)
    with pytest.raises(ValueError, match="peak"):
        mfu(1e12, 1.0, 0.0)
