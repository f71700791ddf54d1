"""``streamchar bench stream``: live sessions measured side by side, one row per preset x steps x overlap.

Each run is a live (paced) session with the shipped character: a first sentence is pushed before the
session starts; once it has been spoken and the character listens, a second sentence is pushed
mid-session, and the run goes on until that one has been heard too (at least ``chunks`` chunks).
Recorded per run: time to first frame (first push -> first frame decoded), chunk latency p50/p95/p99
(planning -> frames decoded), real-time factor (the loop's busy time per media second), deadline misses
(chunks ready after their playback slot), and text-to-speech latency (push -> the pushed text's first
audio playing) for the first and the mid-session sentence. Absolute times count only on a GPU; on a
CPU the ratios between rows are the result.

``--ablate`` adds, for the first step count, one row per fast-path optimisation switched off alone (bf16,
the compiled step, CUDA graphs, the attention kernel, the context K/V cache, decode overlap, the
orchestrator's KV cache and its static, graph-captured form, pinned transfers, the cores split between the
session's two threads), in the same run as the
row with everything on; a switch that changes nothing on this machine (CUDA graphs on a CPU) is listed
as such instead of being timed. Each row
also gives the sampler's device time per chunk and, from the FLOPs model
(:mod:`streamchar.engine.flops`), the DiT's achieved TFLOP/s and its model FLOPs utilisation of the
card's dense bf16 peak. ``--random-init`` times a preset with random weights (``base``, whose weights
do not ship); ``--profile DIR`` records a trace of a few chunks and summarises where a chunk's time goes.
"""

from __future__ import annotations

import logging
import platform
import time

import torch
from tqdm import tqdm

from streamchar.engine.engine import Engine

logger = logging.getLogger(__name__)
FIRST = "Hello there, it is good to see you again."
SECOND = "Tell me what you would like to talk about today."


def run_once(engine: Engine, steps: int, overlap: bool, chunks: int, max_chunks: int | None = None) -> dict:
    max_chunks = max_chunks or 4 * chunks
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    session = engine.session([engine.character()], steps=steps, realtime=True, decode_overlap=overlap)
    second_pushed = None
    try:
        session.push_text(FIRST, final=True)
        for chunk in session:
            spoken_first = session.speech_end is not None and chunk.listening
            if second_pushed is None and spoken_first:
                session.push_text(SECOND, final=True)
                second_pushed = chunk.index
            heard = len(session.stats.tts_latency) >= 2
            if (chunk.index + 1 >= chunks and heard) or chunk.index + 1 >= max_chunks:
                break
        stats = session.stats
        latencies = list(stats.tts_latency)
        summary = stats.summary()
        return {
            "steps": steps, "overlap": overlap, "chunks": stats.chunks,
            "time_to_first_frame_s": summary["time_to_first_frame_s"],
            "chunk_latency_s": summary["chunk_latency_s"],
            "real_time_factor": summary["real_time_factor"],
            "deadline_misses": stats.deadline_misses,
            "stalled_s": round(session.clock.stalled, 3),
            "tts_first_s": round(latencies[0], 4) if latencies else None,
            "tts_mid_session_s": round(latencies[1], 4) if len(latencies) > 1 else None,
            "mid_session_push_after_chunk": second_pushed,
            "sample_s": summary["sample_s"],
            "session_state_mib": round(sum(session.state_nbytes().values()) / 2**20, 1),
            "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "gpu_session_gib": round((torch.cuda.max_memory_allocated() - before) / 2**30, 2) if cuda else None,
        }  # fmt: skip
    finally:
        session.close()


# (name, what turning it off means, overrides of cfg sections: a value or a function of the engine) -- decode
# overlap is a session argument
ABLATIONS: tuple[tuple[str, str, dict], ...] = (
    ("bf16", "fp32 weights and activations", {"engine.mixed_precision": "no", "engine.weights": "fp32"}),
    ("compile", "the eager step", {"engine.compile": "off"}),
    ("cuda_graphs", "compiled, launched kernel by kernel", {"engine.cuda_graphs": False}),
    ("attention", "explicit softmax attention instead of the best kernel", {"engine.attention": "naive"}),
    (
        "context_cache",
        "the whole window recomputed at every step (eager: only the cached step is compiled)",
        {"engine.context_cache": False},
    ),
    ("decode_overlap", "decoding after denoising, not beside the next chunk", {}),
    ("orchestrator_kv_cache", "the LM context recomputed for every token", {"orchestrator.kv_cache": False}),
    (
        "orchestrator_static_cache",
        "the LM's growing cache, each frame's pass launched op by op",
        {"orchestrator.static_cache": "off"},
    ),
    (
        "orchestrator_lean_decode",
        "the LM's per-frame pass through transformers' module layers",
        {"orchestrator.lean_decode": "off"},
    ),
    ("pinned_memory", "pageable host copies", {"engine.pinned_memory": False}),
    (
        "worker_threads",
        "the chunk loop and the decode worker with all of the builder's intra-op threads each",
        {"engine.worker_threads": lambda engine: engine.threads},
    ),
)


def _current(engine: Engine, overrides: dict) -> dict:
    """The engine config's present values of the keys ``overrides`` names (``section.key``)."""
    return {
        dotted: getattr(getattr(engine.cfg, dotted.split(".")[0]), dotted.split(".")[1])
        for dotted in overrides
    }


def _configure(engine: Engine, overrides: dict) -> None:
    """Set ``overrides`` (``section.key`` -> value) on the engine's config and re-apply the fast path."""
    from streamchar.precision import resolve_mixed_precision

    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        setattr(getattr(engine.cfg, section), key, value(engine) if callable(value) else value)
    engine.precision = resolve_mixed_precision(engine.cfg.engine.mixed_precision)
    engine.apply_fast_path()


def _warm(engine: Engine, steps: int) -> None:
    """One short session: compilation, CUDA graph capture, allocator and first-call costs out of the way."""
    engine.warm_up(steps)


def _utilisation(row: dict, flops, peak: float | None, full_window: bool = False) -> None:
    """The DiT's achieved TFLOP/s over the sampler's median time per chunk, and its share of ``peak``
    (``full_window``: each step recomputed the whole window, the context-cache ablation)."""
    from streamchar.engine.mfu import mfu

    seconds = (row.get("sample_s") or {}).get("p50")
    if flops is None or not seconds:
        return
    work = row["steps"] * (flops.dit.step_full_window if full_window else flops.dit.step_cached)
    row["dit_tflops"] = round(work / seconds / 1e12, 3)
    row["dit_mfu"] = round(mfu(work, seconds, peak), 4) if peak else None


def bench_stream(cfg, steps=(1, 2, 4, 32), chunks: int = 16, overlap: str = "both", presets=None,
                 random_init: bool = False, ablate: bool = False, profile: str | None = None,
                 engine: Engine | None = None) -> dict:  # fmt: skip
    """Rows of :func:`run_once`; see the module docstring. ``engine`` reuses a built engine (one preset)."""
    from streamchar.config import load_config
    from streamchar.engine.mfu import peak_bf16_flops

    if engine is not None and presets:
        raise ValueError("Give bench_stream an engine or presets, not both (the engine runs its own preset).")
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[overlap]
    rows, skipped, flops_report = [], [], {}
    for preset in presets or [None]:
        pcfg = cfg if preset is None else load_config(preset)
        if engine is None or preset is not None:
            engine = Engine.random_init(pcfg) if random_init else Engine.from_config(pcfg)
        pcfg = engine.cfg
        branches = engine.sampler().guidance.num_branches
        device_name = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else None
        peak = peak_bf16_flops(device_name) if device_name else None
        flops = {}
        _warm(engine, min(steps))
        for n in tqdm(steps, desc=f"bench {pcfg.preset}", unit="steps"):
            flops[n] = _count(pcfg, n, branches)
            for on in modes:
                row = {"preset": pcfg.preset, "row": "all on"} | run_once(engine, n, on, chunks)
                _utilisation(row, flops[n], peak)
                rows.append(row)
                logger.info("%s", row)
        if ablate:
            n, baseline = steps[0], dict(engine.fast_path)
            for name, meaning, overrides in tqdm(ABLATIONS, desc=f"ablate {pcfg.preset}", unit="switch"):
                previous = _current(engine, overrides)
                try:
                    _configure(engine, overrides)
                    if engine.fast_path == baseline and name != "decode_overlap":
                        skipped.append(
                            {"preset": pcfg.preset, "off": name, "why": "no effect on this machine"}
                        )
                        continue
                    _warm(engine, n)
                    row = {"preset": pcfg.preset, "row": f"{name} off", "meaning": meaning}
                    row |= run_once(engine, n, name != "decode_overlap", chunks)
                    _utilisation(row, flops[n], peak, full_window=name == "context_cache")
                    rows.append(row)
                    logger.info("%s", row)
                finally:
                    _configure(engine, previous)
            row = {"preset": pcfg.preset, "row": "all on, again"} | run_once(engine, n, True, chunks)
            _utilisation(row, flops[n], peak)  # the same as the first row, unless the machine drifted
            rows.append(row)
        if profile:
            from streamchar.engine.profile import profile_session

            try:  # the rows above are the result; a profiler failure must not lose them
                logger.info("profile: %s", profile_session(engine, steps[0], profile)["trace"])
            except Exception as err:
                logger.error("profiling failed (%s: %s); the rows are unaffected", type(err).__name__, err)
        flops_report[pcfg.preset] = {n: f.to_dict() for n, f in flops.items() if f is not None}
    device = "cuda" if engine.device.type == "cuda" else "cpu"
    return {
        "device": device_name if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": engine.precision,
        "fast_path": engine.fast_path, "random_init": random_init,
        "peak_bf16_tflops": round(peak / 1e12, 1) if peak else None,
        "chunk_seconds": engine.timeline.chunk_seconds, "lookahead_chunks": pcfg.engine.lookahead_chunks,
        "guidance_branches": branches, "date": time.strftime("%Y-%m-%d"), "rows": rows,
        "ablations_not_timed": skipped, "flops": flops_report,
    }  # fmt: skip


def _count(cfg, steps: int, branches: int):
    """The FLOPs model of a chunk, or None (logged) where the config's codecs are not modelled."""
    from streamchar.engine.flops import chunk_flops

    try:
        return chunk_flops(cfg, steps, guidance_branches=branches)
    except (ValueError, NotImplementedError) as err:
        logger.warning("no FLOPs model for this config (%s); MFU is not reported", err)
        return None


def format_table(result: dict) -> str:
    head = ("preset", "row", "steps", "overlap", "TTFF s", "chunk p50", "p95", "p99", "RTF", "misses",
            "TTS first", "TTS mid", "sample p50 s", "DiT TFLOP/s", "MFU", "GPU GiB")  # fmt: skip
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in result["rows"]:
        lat = r["chunk_latency_s"]
        mfu = r.get("dit_mfu")
        cells = (r["preset"], r.get("row", ""), r["steps"], "on" if r["overlap"] else "off",
                 r["time_to_first_frame_s"], lat["p50"], lat["p95"], lat["p99"], r["real_time_factor"],
                 f"{r['deadline_misses']}/{r['chunks']}", r["tts_first_s"], r["tts_mid_session_s"],
                 (r.get("sample_s") or {}).get("p50"), r.get("dit_tflops", "–"),
                 f"{100 * mfu:.1f} %" if mfu is not None else "–",
                 r["gpu_session_gib"] if r.get("gpu_session_gib") is not None else "–")  # fmt: skip
        lines.append(" | ".join(str(c) for c in cells))
    note = (f"device {result['device']}, {result['threads']} threads, {result['precision']}, fast path "
            f"{result.get('fast_path')}, chunk {result['chunk_seconds']} s, {result['guidance_branches']} guidance "
            f"branches, lookahead {result['lookahead_chunks']}"
            + (", random weights" if result.get("random_init") else ""))  # fmt: skip
    for s in result.get("ablations_not_timed", []):
        note += f"\n{s['off']} off: {s['why']}"
    return "\n".join(lines) + "\n" + note
