"""The short and long protocols' reports: ``OUT/report.json``, ``OUT/report.md`` and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _cell(value, fmt: str = "{:.3f}") -> str:
    if value is None:
        return "–"
    return fmt.format(value) if isinstance(value, float) else str(value)


def _short_frechet_cell(model: dict) -> str:
    """A short-protocol row's Fréchet distance; with its spread, and its difference from the priors alone (the
    paired spread) when the run measured them."""
    if "frechet_sd" not in model:
        return _cell(model.get("frechet"), "{:.2f}")
    cell = f"{model['frechet']:.3f} ± {model['frechet_sd']:.3f}"
    if "frechet_minus_prior_alone" in model:
        cell += f" ({model['frechet_minus_prior_alone']:+.3f} ± {model['frechet_minus_prior_alone_sd']:.3f})"
    return cell


def _frechet_cell(segment: dict) -> str:
    """A long-protocol segment's Fréchet distance, with its bootstrap spread when the run measured one."""
    if "frechet_sd" not in segment:
        return _cell(segment.get("frechet"))
    return f"{segment['frechet']:.4f} ± {segment['frechet_sd']:.4f}"


def write_report(result: dict, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    models = result["models"]
    if result["protocol"] == "short":
        columns = ["model", "WER", "PER", "Sync-C", "Sync-D", "Sync-C at 0", "offset within ±1", "mouth r",
                   "identity sim", "voice sim", "Fréchet", "frame change", "sharpness", "TTFF s",
                   "latency p50/p95/p99 s", "RTF", "misses", "pointer lag"]  # fmt: skip
        extra = [k for k in ("whisper_wer", "syncnet_c", "syncnet_d", "arcface_sim", "wavlm_sim", "fid", "fvd")
                 if any(k in m for m in models.values())]  # fmt: skip
        lines = [f"# Short protocol: {len(result['clips'])} held-out clips (held-out identities and sentences)", "",
                 "| " + " | ".join(columns + extra) + " |", "|---" * len(columns + extra) + "|"]  # fmt: skip
        for name, m in models.items():
            lat = m.get("chunk_latency_s", {})
            cells = [name, _cell(m.get("wer"), "{:.1%}"), _cell(m.get("per"), "{:.1%}"), _cell(m.get("sync_c")),
                     _cell(m.get("sync_d")), _cell(m.get("sync_c0")), _cell(m.get("sync_offset_within_1"), "{:.0%}"),
                     _cell(m.get("mouth_r")), _cell(m.get("identity_sim")), _cell(m.get("voice_sim")),
                     _short_frechet_cell(m), _cell(m.get("frame_change"), "{:.2f}"), _cell(m.get("sharpness"), "{:.2f}"),
                     _cell(m.get("time_to_first_frame_s")),
                     "/".join(f"{lat[k]:.3f}" for k in ("p50", "p95", "p99")) if lat else "–",
                     _cell(m.get("real_time_factor"), "{:.2f}"), str(m.get("deadline_misses", "–")),
                     _cell(m.get("realign_lag_mean"), "{:.2f}")]  # fmt: skip
            lines.append("| " + " | ".join(cells + [_cell(m.get(k)) for k in extra]) + " |")
        paired = [(name, m["minus_prior_alone"]) for name, m in models.items() if m.get("minus_prior_alone")]
        if paired:
            lines += ["", "Against the priors alone, per-clip differences (mean ± standard error over the clips; "
                      "PER in points):", ""]  # fmt: skip
            for name, d in paired:
                parts = [f"{label} {d[key][0] * scale:+.{digits}f} ± {d[key][1] * scale:.{digits}f}"
                         for key, label, scale, digits in (("per", "PER", 100, 2), ("voice_sim", "voice", 1, 4),
                                                           ("mouth_r", "mouth r", 1, 4), ("sync_c", "Sync-C", 1, 4),
                                                           ("frame_change", "frame change", 1, 3))
                         if key in d]  # fmt: skip
                lines.append(f"- {name}: " + ", ".join(parts))
        (out / "report.md").write_text("\n".join(lines) + "\n")
    else:
        lines = [
            f"# Long protocol: {result['minutes']:g}-minute sessions, {result['segment_seconds']:g} s segments",
            "",
        ]
        for name, m in models.items():
            header = (
                "| from s | WER | PER | Sync-C | offset within ±1 | mouth r | identity sim | voice sim | Fréchet "
                "| frame change | sharpness |"
            )
            lines += [f"## {name}", "", header, "|---|" + "---|" * 10]
            for seg in m["segments"]:
                cells = [f"{seg['start_s']:g}", _cell(seg.get("wer"), "{:.1%}"), _cell(seg.get("per"), "{:.1%}"),
                         _cell(seg.get("sync_c")), _cell(seg.get("sync_offset_within_1"), "{:.0%}"),
                         _cell(seg.get("mouth_r")), _cell(seg.get("identity_sim")), _cell(seg.get("voice_sim")),
                         _frechet_cell(seg), _cell(seg.get("frame_change"), "{:.2f}"),
                         _cell(seg.get("sharpness"), "{:.2f}")]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
            stats = m["sessions"][0]["stats"]
            lines += ["", f"Streaming: time to first frame {stats['time_to_first_frame_s']} s, chunk latency "
                      f"{stats['chunk_latency_s']}, real-time factor {stats['real_time_factor']}, deadline misses "
                      f"{stats['deadline_misses']}.", ""]  # fmt: skip
            if "drift" in m:
                changes = [f"{k} {v['first']} → {v['last']} ({v['change']:+.1%}"
                           + (f" ± {v['change_sd']:.1%})" if "change_sd" in v else ")")
                           for k, v in m["drift"].items() if v["change"] is not None]  # fmt: skip
                lines += ["First to last segment: " + ", ".join(changes), ""]
        (out / "report.md").write_text("\n".join(lines) + "\n")
        keys = ("identity_sim", "frechet", "sync_c", "wer")
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
        for ax, key in zip(axes, keys, strict=True):
            for name, m in models.items():
                xs = [s["start_s"] / 60 for s in m["segments"]]
                ax.plot(xs, [s.get(key, np.nan) for s in m["segments"]], "o-", label=name)
            ax.set(xlabel="session time (min)", title=key)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, m in models.items():
        lat = m.get("latencies") or [x for s in m.get("sessions", []) for x in s["latencies"]]
        if lat:
            ax.hist(np.array(lat) * 1000, bins=40, alpha=0.55, label=name)
    ax.set(xlabel="chunk latency (ms)", ylabel="chunks", title="per-chunk latency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
