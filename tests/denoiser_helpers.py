"""A tiny random JointDiT and random windows for the denoiser tests."""

import torch

from streamchar.denoiser.dit import Conditions, JointDiT, WindowContext
from streamchar.timeline import Timeline

TL = Timeline(
    chunk_latent_frames=3, motion_latent_frames=2, sink_latent_frames=3, reference_voice_seconds=0.24
)
C, SIZE, AUDIO_DIM, UNITS = 4, 8, 12, 20


def tiny_dit(seed: int = 0, perturb: bool = True, **kwargs) -> JointDiT:
    """A 2-layer model; ``perturb`` replaces the zero initialisation so every path carries signal."""
    torch.manual_seed(seed)
    args = dict(timeline=TL, latent_channels=C, latent_size=SIZE, audio_dim=AUDIO_DIM, num_units=UNITS,
                width=32, depth=2, heads=2, patch_size=4, cond_window=1.0)  # fmt: skip
    args.update(kwargs)
    model = JointDiT(**args)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def random_window(b: int = 2, seed: int = 1, first: bool = False):
    g = torch.Generator().manual_seed(seed)
    L, M, S, R = (
        TL.chunk_latent_frames,
        TL.motion_latent_frames,
        TL.sink_latent_frames,
        TL.reference_voice_tokens,
    )

    def r(*shape):
        return torch.randn(*shape, generator=g)

    video, audio = r(b, C, L, SIZE, SIZE), r(b, L, AUDIO_DIM)
    t = (torch.rand(b, generator=g), torch.rand(b, generator=g))
    cond = Conditions(torch.randint(0, UNITS, (b, L), generator=g), torch.randint(0, 2, (b, L), generator=g))
    voice_valid = torch.ones(b, R, dtype=torch.bool)
    voice_valid[0, -2:] = False
    ctx = WindowContext(
        ref_video=r(b, C, 1, SIZE, SIZE), ref_voice=r(b, R, AUDIO_DIM), ref_voice_valid=voice_valid,
        ref_image_valid=torch.ones(b, dtype=torch.bool),
        sink_video=r(b, C, S, SIZE, SIZE), sink_audio=r(b, S, AUDIO_DIM),
        has_sink=torch.full((b,), not first), motion_video=r(b, C, M, SIZE, SIZE), motion_audio=r(b, M, AUDIO_DIM),
        has_motion=torch.full((b,), not first),
    )  # fmt: skip
    return video, audio, t, cond, ctx


def random_batch(b: int = 4, seed: int = 3) -> dict:
    """A batch shaped like collated WindowDataset items, for the tiny model above."""
    video, audio, _, cond, ctx = random_window(b, seed)
    first = torch.arange(b) % 3 == 0
    return {
        "video": video, "audio": audio, "audio_mask": torch.ones(b, audio.shape[1], dtype=torch.bool),
        "units": cond.units, "speaking": cond.speaking, "ref_image": ctx.ref_video, "ref_voice": ctx.ref_voice,
        "ref_voice_mask": ctx.ref_voice_valid, "sink_video": ctx.sink_video, "sink_audio": ctx.sink_audio,
        "has_sink": ~first, "motion_video": ctx.motion_video, "motion_audio": ctx.motion_audio, "has_motion": ~first,
    }  # fmt: skip
