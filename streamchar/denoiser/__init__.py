"""The joint audio-video diffusion transformer, its attention backends, flow matching and samplers."""
