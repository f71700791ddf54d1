"""``streamchar bench stream``: random weights, the ablation rows, utilisation and the profile summary."""

from __future__ import annotations

import pytest

from streamchar.config import load_config
from streamchar.engine.bench import ABLATIONS, bench_stream, format_table


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    cfg = load_config("tiny", ["engine.steps=1", "engine.compile=off"])
    profile = tmp_path_factory.mktemp("profile")
    return bench_stream(cfg, steps=(1,), chunks=2, overlap="on", random_init=True, ablate=True,
                        profile=str(profile)), profile  # fmt: skip


def test_every_switch_is_timed_or_said_to_do_nothing_here(result):
    report, _ = result
    timed = {r["row"].removesuffix(" off") for r in report["rows"] if r["row"].endswith(" off")}
    untimed = {s["off"] for s in report["ablations_not_timed"]}
    assert timed | untimed == {name for name, _, _ in ABLATIONS} and not timed & untimed
    # on a CPU the CUDA-only switches change nothing; the context cache and decode overlap always do
    assert {"cuda_graphs", "pinned_memory"} <= untimed and {"context_cache", "decode_overlap"} <= timed
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["decode_overlap off"]["overlap"] is False and rows["all on"]["overlap"] is True
    assert "all on, again" in rows and report["random_init"]
    for row in report["rows"]:
        assert row["real_time_factor"] > 0 and row["sample_s"]["p50"] > 0 and row["dit_tflops"] > 0
        assert row["dit_mfu"] is None  # no bf16 peak for a CPU
    table = format_table(report)
    assert "context_cache off" in table and "cuda_graphs off: no effect on this machine" in table


def test_the_flops_model_and_the_profile_come_with_the_rows(result):
    report, profile = result
    flops = report["flops"]["tiny"][1]["flops"]
    assert flops["total"] == sum(flops[k] for k in ("priors", "dit_denoising", "dit_motion_update", "video_decoder",
                                                    "audio_decoder", "orchestrator"))  # fmt: skip
    assert flops["priors"] > 0  # the tiny preset refines the priors' means
    summary = (profile / "profile.md").read_text()
    for stage in ("plan", "priors", "sample", "decode_video", "decode_audio", "to_host"):
        assert f"\n{stage} |" in summary
    assert (profile / "trace.json").stat().st_size > 0
