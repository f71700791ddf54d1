"""The orchestrator (DESIGN.md section 6): streamed transcript → frame-aligned audio conditions.

- :mod:`~streamchar.orchestrator.text`: normalisation, words as they complete, espeak-ng phonemes, the
  unit vocabulary and its ``PreTrainedTokenizerFast``;
- :mod:`~streamchar.orchestrator.pointer`: the progress-aware pointer, the constraint it puts on each
  frame, and CTC realignment;
- :mod:`~streamchar.orchestrator.model` / :mod:`~streamchar.orchestrator.dataset`: the unit LM (a plain HF
  causal LM; loaded by :mod:`streamchar.loaders`) and its training sequences from the corpus;
- :mod:`~streamchar.orchestrator.backends`: ``hf`` and ``vllm``;
- :mod:`~streamchar.orchestrator.session`: :class:`Orchestrator` (``push_text`` / ``next_chunk``);
- :mod:`~streamchar.orchestrator.reader`: the CTC phoneme reader the pointer is realigned on;
  :mod:`~streamchar.orchestrator.phoneme_probe`: the latent probe stage-2 rollouts fall back on;
- :mod:`~streamchar.orchestrator.plan`: ``streamchar plan``, a text's plan in readable frames.
"""

from streamchar.orchestrator.session import AudioConditions, Orchestrator, VoicePrompt
from streamchar.orchestrator.text import TextError

__all__ = ["AudioConditions", "Orchestrator", "TextError", "VoicePrompt"]
