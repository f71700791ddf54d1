"""The trained evaluation instruments: models StreamChar trains on the corpus's ground truth to judge generated
speech and video (phoneme recognizer, sync expert, identity and speaker encoders, mouth probes), the folder
format and training loop they share (``base.py``), and training each by name (``train.py``)."""
