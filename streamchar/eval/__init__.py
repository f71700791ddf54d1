"""Evaluation, split by concern:

- ``instruments/``: the models StreamChar trains to judge its own output (phoneme recognizer, sync expert,
  identity and speaker encoders, mouth probes) and how each is trained by name;
- ``published/``: loaders for published evaluation models (SyncNet, Whisper, WavLM, Inception, I3D,
  ArcFace), read only from local paths;
- ``metrics/``: the instruments' fixed front-ends and evaluation cache, error rates and statistics;
- ``protocols/``: what is run and measured (held-out short and long sessions, unseen text, the instruments'
  proofs, the orchestrator, distilled students, teacher samples, the codecs);
- ``reports/``: the JSON, Markdown tables and plots each protocol writes.
"""
