"""The unseen-text protocol's report (``streamchar eval unseen``): ``OUT/report.json`` and ``OUT/report.md``."""

from __future__ import annotations

import json
from pathlib import Path


def write_unseen_report(result: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    m, e = result["model_speech"], result["espeak_speech"]
    lines = [
        f"# Unseen text: {len(result['sentences'])} public-domain sentences spoken by {result['character']}", "",
        "| speech | PER | WER | voice sim |", "|---|---|---|---|",
        f"| {result['model']} | {m['per']:.1%} | {m['wer']:.1%} | {m.get('voice_sim', float('nan')):.3f} |",
        f"| espeak-ng, same voice | {e['per']:.1%} | {e['wer']:.1%} | {e.get('voice_sim', float('nan')):.3f} |", "",
        f"PER gap (model - espeak): {result['per_gap']:+.1%}. {result['unique_words']} distinct words: "
        f"{len(result['out_of_lexicon'])} outside the recognizer's lexicon ({', '.join(result['out_of_lexicon'])}), "
        f"{len(result['never_in_corpus'])} never said in the corpus.", "",
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines) + "\n")
