#!/bin/bash
# audio of every shard -> acoustic prior (all voices) -> its speech beside v1 -> video prior -> turns -> teachers
cd /work/main
set -x
nice -n 5 .venv/bin/streamchar data encode data/corpus --out data/latents --video-codec checkpoints/tiny/vae data.encode.mixed_precision=bf16 data.encode.max_shards=20 > runs/latents-audio.log 2>&1
echo "audio latents done $(date)"
nice -n 5 .venv/bin/streamchar recipe tiny --only prior-audio > runs/prior-audio.log 2>&1
echo "prior-audio done $(date)"
nice -n 5 .venv/bin/python bench/prior_speech.py --prior v1=runs/prior-audio-v1 --prior v2=runs/prior-audio --clips 48 --json runs/prior-audio/speech.json > runs/prior-audio-speech.log 2>&1
echo "speech done $(date)"
nice -n 5 .venv/bin/streamchar recipe tiny --only prior-video > runs/prior-video.log 2>&1
echo "prior-video done $(date)"
nice -n 5 .venv/bin/python -c "from streamchar.orchestrator.dataset import build_turn_table; build_turn_table('data/corpus', 'runs/orch-tiny', progress=False)" > runs/turns.log 2>&1
echo "turns done $(date)"
P="prior.audio_path=runs/prior-audio/final prior.video_path=runs/prior-video/final"
nice -n 5 .venv/bin/python bench/residual_scales.py --prior-audio runs/prior-audio --prior-video runs/prior-video > runs/scales.json 2> runs/scales.log
SV=$(.venv/bin/python -c "import json; print(round(json.load(open('runs/scales.json'))['video_residual'], 2))")
SA=$(.venv/bin/python -c "import json; print(round(json.load(open('runs/scales.json'))['audio_residual'], 2))")
echo "scales video $SV audio $SA $(date)"
T="train.teacher.steps=3000 train.teacher.lr=5e-4 train.teacher.warmup_steps=100 train.teacher.ema_decay=0.998 train.teacher.eval_every=250 train.teacher.ckpt_every=125"
nice -n 5 .venv/bin/streamchar train teacher --latents data/latents --out runs/teacher-matched --max-steps 450 $P $T denoiser.residual_scale_video=$SV denoiser.residual_scale_audio=$SA > runs/teacher-matched.log 2>&1
echo "matched done $(date)"
nice -n 5 .venv/bin/streamchar train teacher --latents data/latents --out runs/teacher-sigma1 --max-steps 450 $P $T > runs/teacher-sigma1.log 2>&1
echo "sigma1 done $(date)"
nice -n 5 .venv/bin/python bench/refiner.py --model matched=runs/teacher-matched@4 --model sigma1=runs/teacher-sigma1@4 --prior-audio runs/prior-audio --prior-video runs/prior-video --clips 8 --json runs/refiner-formulations.json > runs/refiner-formulations.log 2>&1
echo "refiner done $(date)"
