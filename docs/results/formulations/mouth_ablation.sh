#!/bin/bash
# mouth weighting on/off at equal budget: two video priors of 600 steps, then the priors alone on 8 clips
cd /work/main
for mw in 4 1; do
  nice -n 5 .venv/bin/streamchar train prior --which video --latents data/latents --out runs/prior-video-mw$mw \
    prior.audio_path=runs/prior-audio/final train.prior_video.steps=600 train.prior_video.mouth_weight=$mw > runs/prior-video-mw$mw.log 2>&1
  echo "prior mw$mw done $(date)"
  nice -n 5 .venv/bin/python bench/refiner.py --model t2=runs/teacher-tiny@2 --guidance 1 1 1 --prior-audio runs/prior-audio --prior-video runs/prior-video-mw$mw --clips 8 --json runs/refiner-mw$mw.json > runs/refiner-mw$mw.log 2>&1
  echo "bench mw$mw done $(date)"
done
