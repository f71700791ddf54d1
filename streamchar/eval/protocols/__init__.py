"""Evaluation protocols, each behind a ``streamchar`` command: held-out short and long sessions through the
engine (``heldout.py``, with ``speak.py`` and ``measure.py``), unseen text (``unseen.py``), the instruments'
proofs (``proofs.py``), the orchestrator (``orchestrator.py``), distilled students (``distill.py``), teacher
samples (``teacher_samples.py``) and the codecs (``codecs.py``)."""
