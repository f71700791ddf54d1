"""Where a chunk's time goes: a profiler trace of a few chunks of a live session, summarised per stage.

The engine marks its stages with ``torch.profiler.record_function``: ``streamchar.plan`` (the orchestrator),
``streamchar.priors`` (the priors' means), ``streamchar.context_update`` (sink and motion K/V),
``streamchar.sample`` (the denoising steps), ``streamchar.decode_video``, ``streamchar.decode_audio`` and
``streamchar.to_host``. The summary gives each stage's host time and device time per chunk and the device's
busiest kernels; the Chrome trace (``trace.json``, open it in Perfetto or chrome://tracing) shows how the
decode stream overlaps the next chunk's denoising.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

logger = logging.getLogger(__name__)
STAGES = ("plan", "priors", "context_update", "sample", "decode_video", "decode_audio", "to_host")


def profile_session(engine, steps: int, out: str | Path, chunks: int = 8) -> dict:
    """Profile ``chunks`` chunks of an offline session after one warm-up chunk; writes ``out/trace.json``,
    ``out/profile.json`` and ``out/profile.md`` and returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = engine.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    text = " ".join(["Tell me what you would like to talk about today."] * 4)
    with engine.session([engine.character()], steps=steps, seed=0) as session:
        session.push_text(text, final=True)
        iterator = iter(session)
        next(iterator)  # warm-up chunk outside the trace
        with profile(activities=activities, experimental_config=_all_threads()) as prof:
            profiled = 0
            for _ in iterator:
                profiled += 1
                if profiled >= chunks:
                    break
            if cuda:
                torch.cuda.synchronize()
    prof.export_chrome_trace(str(out / "trace.json"))
    events = prof.key_averages()
    device_attr = "device_time_total" if cuda else None
    stages = {}
    for event in events:
        if event.key.startswith("streamchar."):
            name = event.key.split(".", 1)[1]
            stages[name] = {
                "calls": event.count,
                "host_ms_per_chunk": round(event.cpu_time_total / 1000 / max(profiled, 1), 3),
                "device_ms_per_chunk": round(getattr(event, device_attr) / 1000 / max(profiled, 1), 3)
                if device_attr
                else None,
            }
    kernels = []
    if cuda:
        ranked = sorted(
            (e for e in events if e.self_device_time_total > 0 and not e.key.startswith("streamchar.")),
            key=lambda e: -e.self_device_time_total,
        )
        per = max(profiled, 1)
        kernels = [{"name": e.key[:90], "device_ms_per_chunk": round(e.self_device_time_total / 1000 / per, 3),
                    "calls_per_chunk": round(e.count / per, 1)} for e in ranked[:12]]  # fmt: skip
    summary = {"chunks": profiled, "steps": steps, "device": str(engine.device), "fast_path": engine.fast_path,
               "stages": {k: stages[k] for k in STAGES if k in stages}, "top_kernels": kernels,
               "trace": str(out / "trace.json")}  # fmt: skip
    (out / "profile.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "profile.md").write_text(format_profile(summary) + "\n")
    return summary


def _all_threads():
    """A profiler config that records every thread (the producer and the decoder, not only this one); an
    older torch without the option records this thread only, and the stages then come out partial."""
    try:
        return torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except (TypeError, AttributeError):
        logger.warning("this torch cannot profile every thread; the summary covers the calling thread only")
        return None


def format_profile(summary: dict) -> str:
    lines = ["stage | calls | host ms / chunk | device ms / chunk", "--- | --- | --- | ---"]
    for name, s in summary["stages"].items():
        device = s["device_ms_per_chunk"] if s["device_ms_per_chunk"] is not None else "–"
        lines.append(f"{name} | {s['calls']} | {s['host_ms_per_chunk']} | {device}")
    if summary["top_kernels"]:
        lines += ["", "kernel | device ms / chunk | calls / chunk", "--- | --- | ---"]
        lines += [
            f"{k['name']} | {k['device_ms_per_chunk']} | {k['calls_per_chunk']}"
            for k in summary["top_kernels"]
        ]
    return "\n".join(lines)
