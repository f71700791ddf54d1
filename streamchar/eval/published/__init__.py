"""Published evaluation models (SyncNet, Whisper, WavLM, Inception, I3D, ArcFace), loaded only from paths the
user gives.

| loader             | model                                                         | files                         |
|--------------------|---------------------------------------------------------------|-------------------------------|
| ``load_syncnet``   | SyncNet (Chung & Zisserman 2016), lip sync: Sync-C / Sync-D   | ``syncnet_v2.model``          |
| ``load_whisper``   | Whisper speech recognition (Hugging Face layout), for WER     | a checkpoint directory        |
| ``load_wavlm_sv``  | WavLM x-vector speaker verification (wavlm-base-plus-sv)      | a checkpoint directory        |
| ``load_inception`` | Inception-v3 of NVIDIA's stylegan2-ada-pytorch metrics, FID   | ``inception-2015-12-05.pt``   |
| ``load_i3d``       | Kinetics-400 I3D of StyleGAN-V, FVD                           | ``i3d_torchscript.pt``        |
| ``load_arcface``   | InsightFace ArcFace (ONNX), identity similarity               | e.g. ``w600k_r50.onnx``       |

Nothing here downloads. Every loader first checks that each file it needs is on disk and raises
:class:`ExternalWeightsError` naming the first missing one; a loader whose optional package is absent
(onnxruntime for ArcFace) says which ``pip install`` fixes it. Where a loader takes a single weights file,
a directory is also accepted and the file's published name is looked up inside it. Every wrapper runs its
model under ``torch.no_grad()`` on the ``device`` it was loaded for (``"cpu"`` unless told otherwise).

``syncnet.py`` holds SyncNet, ``speech.py`` Whisper and WavLM, ``vision.py`` Inception, I3D and ArcFace, and
``files.py`` the file checks they share.
"""
