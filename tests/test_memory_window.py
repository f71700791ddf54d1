"""WindowMemory against a naive reference: the sink is the first chunk's first frames, taken once; the motion
frames are the last chunk's last frames; each with its audio."""

import pytest
import torch

from streamchar.memory.window import WindowMemory
from streamchar.timeline import Timeline


def _chunk(timeline: Timeline, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames, tokens = (
        timeline.chunk_latent_frames,
        timeline.chunk_latent_frames * timeline.audio_tokens_per_latent_frame,
    )
    video = (
        torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(2, 3, frames, 4, 4)
        + 100 * index
    )
    audio = torch.arange(tokens, dtype=torch.float32).view(1, tokens, 1).expand(2, tokens, 5) + 100 * index
    return video.contiguous(), audio.contiguous()


@pytest.mark.parametrize("use_sink,use_motion", [(True, True), (False, True), (True, False)])
def test_window_memory_matches_a_naive_reference(use_sink, use_motion):
    timeline = Timeline()
    memory = WindowMemory(timeline, use_sink=use_sink, use_motion=use_motion)
    assert memory.advance() == (None, None)
    reference = torch.randn(2, 3, 4, 4)
    last, silence = memory.prior_context(reference, audio_dim=5)
    assert torch.equal(last, reference) and not silence.any()
    assert silence.shape == (2, timeline.motion_audio_tokens, 5)
    chunks = [_chunk(timeline, i) for i in range(4)]
    m, s = timeline.motion_latent_frames, timeline.sink_latent_frames
    m_a, s_a = timeline.motion_audio_tokens, timeline.sink_audio_tokens
    for i, (video, audio) in enumerate(chunks):
        memory.push(video, audio)
        sink, motion = memory.advance()
        if use_sink and i == 0:  # the sink enters once, right after the first chunk
            assert torch.equal(sink[0], chunks[0][0][:, :, :s]) and torch.equal(
                sink[1], chunks[0][1][:, :s_a]
            )
        else:
            assert sink is None
        if use_sink:
            assert torch.equal(memory.sink[0], chunks[0][0][:, :, :s])
        if use_motion:
            assert torch.equal(motion[0], video[:, :, -m:]) and torch.equal(motion[1], audio[:, -m_a:])
            last, motion_audio = memory.prior_context(reference, audio_dim=5)
            assert torch.equal(last, video[:, :, -1]) and torch.equal(motion_audio, audio[:, -m_a:])
        else:
            assert motion is None
        assert memory.nbytes() == video.numel() * 4 + audio.numel() * 4
