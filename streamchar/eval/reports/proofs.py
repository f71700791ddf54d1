"""The instruments' proof report (``streamchar eval prove``): ``OUT.json``, ``OUT.md`` and ``OUT.png``."""

from __future__ import annotations

import json
from pathlib import Path


def write_proof_report(result: dict, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    rec = result["recognizer"]
    sync = {int(k): v for k, v in result["sync"]["per_shift"].items()}
    lines = [
        "# Evaluation instruments on held-out ground truth",
        "",
        "Each instrument proves itself here before it judges a model (`streamchar eval prove`).",
        "",
        "## Transcript fidelity (CTC recognizer)",
        "",
        "| audio | PER | WER |",
        "|---|---|---|",
        f"| held-out identities, ground-truth corpus audio ({rec['heldout_identities']['clips']} monologues) | "
        f"{rec['heldout_identities']['per']:.1%} | {rec['heldout_identities']['wer']:.1%} |",
        f"| held-out sentences by voices not in the corpus ({rec['heldout_voices_and_sentences']['utterances']}) | "
        f"{rec['heldout_voices_and_sentences']['per']:.1%} | {rec['heldout_voices_and_sentences']['wer']:.1%} |",
        "",
        f"Out-of-vocabulary rate of the held-out transcripts: {rec['test_oov_rate']:.1%} (every OOV word is a word error).",
        "",
        "## Lip sync (sync expert), audio shifted by k frames",
        "",
        "Sync-C and Sync-D are taken at the best offset, so they do not move when the audio is only shifted; "
        "the confidence at the nominal alignment (Sync-C at offset 0) is what falls.",
        "",
        "| shift k | offset found = k | within ±1 | Sync-C | Sync-D | Sync-C at offset 0 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {k:+d} | {v['accuracy']:.1%} | {v['within_1']:.1%} | {v['sync_c']:.3f} | {v['sync_d']:.3f} | "
            f"{v['sync_c0']:.3f} |"
            for k, v in sorted(sync.items())
        ),  # fmt: skip
        "",
        "## Identity and voice (ROC AUC, same vs different, held-out identities)",
        "",
        f"- identity encoder: **{result['identity']['roc_auc']:.4f}** ({result['identity']['identities']} identities, "
        f"{result['identity']['faces']} frames, pairs from different clips)",
        f"- speaker encoder: **{result['speaker']['roc_auc']:.4f}** ({result['speaker']['voices']} voices, "
        f"{result['speaker']['utterances']} utterances)",
        "",
        "## Fréchet distance (identity-encoder features)",
        "",
        f"- two halves of the held-out ground truth (alternate clips, {result['frechet']['frames_per_half']} frames): "
        f"**{result['frechet']['halves']}**; below, the second half degraded against the first",
        "- blur sigma (px at 64 px): " + ", ".join(f"{k}: {v}" for k, v in result["frechet"]["blur"].items()),
        "- Gaussian noise sigma (of 255): "
        + ", ".join(f"{k}: {v}" for k, v in result["frechet"]["noise"].items()),
        f"- rises monotonically from the halves' value in both: **{result['frechet']['monotone']}**",
        "",
        "## Mouth-opening probe",
        "",
        f"Pearson r with the true mouth opening on held-out frames: **{result['mouth_probe']['pearson_r']}**",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    shifts = sorted(sync)
    axes[0].plot(shifts, [sync[k]["accuracy"] for k in shifts], "o-", label="exact")
    axes[0].plot(shifts, [sync[k]["within_1"] for k in shifts], "s--", label="within ±1")
    axes[0].set(
        xlabel="audio shift (frames)", ylabel="offset recovered", title="sync expert: offset recovery"
    )
    axes[0].set_ylim(0, 1.05)
    axes[0].legend()
    axes[1].plot(shifts, [sync[k]["sync_c"] for k in shifts], "o-", label="Sync-C (at the best offset)")
    axes[1].plot(shifts, [sync[k]["sync_c0"] for k in shifts], "s-", label="Sync-C at offset 0")
    axes[1].set(xlabel="audio shift (frames)", ylabel="confidence", title="sync confidence vs shift")
    axes[1].legend(fontsize=7)
    fr = result["frechet"]
    axes[2].plot([float(k) for k in fr["blur"]], list(fr["blur"].values()), "o-", label="blur sigma (px)")
    axes[2].plot(
        [float(k) / 16 for k in fr["noise"]], list(fr["noise"].values()), "s-", label="noise sigma / 16"
    )
    axes[2].axhline(fr["halves"], color="gray", ls=":", label="GT half vs half")
    axes[2].set(
        xlabel="strength", ylabel="Fréchet distance", title="Fréchet distance vs degradation", yscale="log"
    )
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out.parent / f"{out.name}.png", dpi=110)
    plt.close(fig)
