"""Reading and writing media: resampling, WAV, and mp4 (H.264 + AAC) through PyAV.

AAC encoders prime 1024 samples. Audio frames handed to PyAV without ``pts`` and ``time_base``
come out 1024 samples late in every player; :class:`Mp4Writer` gives every audio frame its
``pts`` and ``time_base`` so the encoder starts at pts -1024, the muxer writes an edit list, and
decoded audio lines up with the video to the sample. Audio is muxed at 48 kHz so that one AAC
frame (1024 samples, 21 ms) is shorter than a video frame.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from streamchar.timeline import Timeline

logger = logging.getLogger(__name__)

AAC_FRAME_SAMPLES = 1024


class MediaError(ValueError):
    """A media file that cannot be read or written; the message says what to do."""


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of a mono float waveform ``[N]`` (deterministic)."""
    from scipy.signal import resample_poly

    if orig_rate == target_rate:
        return np.asarray(samples, dtype=np.float32)
    g = math.gcd(int(orig_rate), int(target_rate))
    out = resample_poly(np.asarray(samples, dtype=np.float64), target_rate // g, orig_rate // g)
    return out.astype(np.float32)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad ``samples`` along its first axis to ``length``."""
    if len(samples) >= length:
        return samples[:length]
    pad = np.zeros((length - len(samples), *samples.shape[1:]), dtype=samples.dtype)
    return np.concatenate([samples, pad])


# -- WAV ------------------------------------------------------------------------------------------
def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV of a mono float waveform in [-1, 1] (byte-identical for identical input)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def read_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any audio file librosa/soundfile reads, as mono float32 at ``sample_rate``."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"Audio file {path} does not exist; check the path.")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    except Exception:
        try:
            samples, rate = _decode_audio_pyav(path)
        except Exception as err:
            raise MediaError(f"Could not read audio from {path} ({err}); convert it to WAV or FLAC.") from err
    return resample(samples, rate, sample_rate)


def _decode_audio_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream.")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        blocks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                blocks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            blocks.append(out.to_ndarray().reshape(-1))
        rate = stream.rate
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate


# -- images ---------------------------------------------------------------------------------------
def read_image(source: str | Path | bytes, size: int, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """A square RGB image (file path or encoded bytes) as uint8 ``[size, size, 3]``, resized if needed."""
    from PIL import Image, UnidentifiedImageError

    name = "the uploaded image" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > max_pixels:
            raise MediaError(
                f"{name} is {image.width}x{image.height}, over {max_pixels:,} pixels; send a smaller image."
            )
        image = image.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise MediaError(
            f"Could not read {name} as an image ({type(err).__name__}); pass a PNG or JPEG file."
        ) from err
    if image.width != image.height:
        raise MediaError(
            f"{name} is {image.width}x{image.height}; crop it to a square around the face first."
        )
    if image.width != size:
        image = image.resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


# -- mp4 ------------------------------------------------------------------------------------------
class Mp4Writer:
    """Incremental H.264 + AAC mp4 writer; frames and audio may arrive in any chunking.

    Args:
        path: output file; written to a temporary name and renamed on :meth:`close`.
        fps: video frame rate.
        sample_rate: rate of the audio handed to :meth:`write_audio`, or ``None`` for no audio.
        mux_sample_rate: AAC rate in the file (48 kHz keeps one AAC frame under a video frame).
        crf: x264 constant rate factor (0 = lossless luma, 18 = visually lossless).
        metadata: container tags (``title``, ``comment``...).
    """

    def __init__(
        self,
        path: str | Path,
        fps: int,
        sample_rate: int | None = Timeline.sample_rate,
        mux_sample_rate: int = 48000,
        crf: int = 18,
        preset: str = "medium",
        audio_bitrate: int = 96000,
        metadata: dict[str, str] | None = None,
    ) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.sample_rate = sample_rate
        self.mux_sample_rate = mux_sample_rate
        fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=self.path.parent, prefix=f".{self.path.stem}.")
        os.close(fd)
        self._tmp = Path(tmp)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._container.metadata.update(metadata or {})
        self._crf = crf
        self._preset = preset
        self._video = None  # created on the first frame, when the size is known
        self._frames_written = 0
        self._audio = None
        self._pending = np.zeros(0, np.float32)  # audio at mux rate not yet in a full AAC frame
        self._audio_samples_sent = 0
        self._fir: np.ndarray | None = None
        self._in_samples = self._out_samples = self._dropped = 0
        if sample_rate is not None:
            self._audio = self._container.add_stream("aac", rate=mux_sample_rate)
            self._audio.layout = "mono"
            self._audio.bit_rate = audio_bitrate
            self._audio.time_base = Fraction(1, mux_sample_rate)
        self._closed = False

    def _open_video(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise MediaError(
                f"H.264 needs even frame sizes, got {width}x{height}; resize or crop by one pixel."
            )
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, self.fps)
        stream.options = {"crf": str(self._crf), "preset": self._preset}
        stream.codec_context.time_base = Fraction(1, self.fps)
        self._video = stream

    def write_frames(self, frames: np.ndarray) -> None:
        """Append RGB frames ``uint8 [T, H, W, 3]`` (or one frame ``[H, W, 3]``)."""
        import av

        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise MediaError(f"Frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}.")
        if self._video is None:
            self._open_video(frames.shape[1], frames.shape[2])
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self._frames_written
            frame.time_base = Fraction(1, self.fps)
            for packet in self._video.encode(frame):
                self._container.mux(packet)
            self._frames_written += 1

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float audio ``[N]`` at ``sample_rate``."""
        if self._audio is None:
            raise MediaError("This writer was opened without audio (sample_rate=None).")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.sample_rate != self.mux_sample_rate:
            # integer-ratio rates (16 kHz -> 48 kHz) resample exactly block by block
            ratio = Fraction(self.mux_sample_rate, self.sample_rate)
            if ratio.denominator != 1:
                raise MediaError(
                    f"Audio at {self.sample_rate} Hz cannot be muxed at {self.mux_sample_rate} Hz block by block; "
                    "use a mux rate that is a whole multiple of it."
                )
            samples = self._upsample(samples, ratio.numerator)
        self._pending = np.concatenate([self._pending, samples])
        self._flush_audio(final=False)

    def _upsample(self, samples: np.ndarray, factor: int) -> np.ndarray:
        """Streaming zero-stuff + windowed-sinc low-pass, with its group delay removed, so that
        sample k of the input lands exactly at output sample k * factor."""
        from scipy.signal import firwin, lfilter

        if self._fir is None:
            self._fir = (firwin(24 * factor + 1, 1.0 / factor) * factor).astype(np.float64)
            self._fir_state = np.zeros(len(self._fir) - 1)
            self._fir_delay = (len(self._fir) - 1) // 2
        stuffed = np.zeros(len(samples) * factor)
        stuffed[::factor] = samples
        out, self._fir_state = lfilter(self._fir, 1.0, stuffed, zi=self._fir_state)
        self._in_samples += len(samples)
        drop = min(self._fir_delay - self._dropped, len(out))
        self._dropped += drop
        out = out[drop:]
        self._out_samples += len(out)
        return out.astype(np.float32)

    def _drain_upsampler(self) -> np.ndarray:
        if self._fir is None:
            return np.zeros(0, np.float32)
        factor = self.mux_sample_rate // self.sample_rate
        expected = self._in_samples * factor
        tail = self._upsample(np.zeros(self._fir_delay // factor + 1, np.float32), factor)
        keep = max(expected - (self._out_samples - len(tail)), 0)
        return tail[:keep]

    def _flush_audio(self, final: bool) -> None:
        import av

        while len(self._pending) >= AAC_FRAME_SAMPLES or (final and len(self._pending)):
            block = self._pending[:AAC_FRAME_SAMPLES]
            self._pending = self._pending[AAC_FRAME_SAMPLES:]
            frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
            frame.sample_rate = self.mux_sample_rate
            frame.pts = self._audio_samples_sent
            frame.time_base = Fraction(1, self.mux_sample_rate)
            self._audio_samples_sent += len(block)
            for packet in self._audio.encode(frame):
                self._container.mux(packet)

    def close(self) -> Path:
        """Flush encoders, finish the file and move it into place; returns its path."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            if self._audio is not None:
                self._pending = np.concatenate([self._pending, self._drain_upsampler()])
                self._flush_audio(final=True)
                for packet in self._audio.encode(None):
                    self._container.mux(packet)
            if self._video is not None:
                for packet in self._video.encode(None):
                    self._container.mux(packet)
            self._container.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        """Stop without writing the file."""
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            finally:
                self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = Timeline.sample_rate,
    **kwargs,
) -> Path:
    """Write ``frames`` uint8 ``[T, H, W, 3]`` and optional mono ``audio`` ``[N]`` to an mp4."""
    with Mp4Writer(path, fps, sample_rate if audio is not None else None, **kwargs) as writer:
        writer.write_frames(frames)
        if audio is not None:
            writer.write_audio(audio)
    return Path(path)


def read_video_timed(path: str | Path, audio_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Decode a video file with the presentation time of every frame.

    Returns ``frames`` uint8 ``[T, H, W, 3]``, ``times`` float64 ``[T]`` (seconds from the first
    frame), and mono float32 audio at ``audio_rate`` that starts at the first frame's time (padded
    or trimmed by the streams' start offset), or ``None`` when the file has no audio stream.
    """
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except Exception as err:
        raise MediaError(
            f"Could not open {path} ({type(err).__name__}); the file is missing or corrupt."
        ) from err
    try:
        with container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream.")
            vstream = container.streams.video[0]
            frames, times = [], []
            for frame in container.decode(vstream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(
                    float(frame.time)
                    if frame.time is not None
                    else len(times) / float(vstream.average_rate or 25)
                )
            has_audio = bool(container.streams.audio)
            audio_start = None
            if has_audio:
                astream = container.streams.audio[0]
                if astream.start_time is not None:
                    audio_start = float(astream.start_time * astream.time_base)
    except MediaError:
        raise
    except Exception as err:
        raise MediaError(
            f"Could not decode {path} ({type(err).__name__}: {err}); the file is corrupt."
        ) from err
    if not frames:
        raise MediaError(f"{path} has a video stream with no decodable frames.")
    times_arr = np.asarray(times, dtype=np.float64)
    first = times_arr[0]
    audio = None
    if has_audio:
        try:
            samples, rate = _decode_audio_pyav(path)
        except Exception as err:
            raise MediaError(f"Could not decode the audio of {path} ({type(err).__name__}).") from err
        samples = resample(samples, rate, audio_rate)
        offset = int(round(((audio_start if audio_start is not None else first) - first) * audio_rate))
        if offset > 0:
            samples = np.concatenate([np.zeros(offset, np.float32), samples])
        elif offset < 0:
            samples = samples[-offset:]
        audio = samples.astype(np.float32)
    return np.stack(frames), times_arr - first, audio


def read_video(
    path: str | Path, audio_rate: int | None = None
) -> tuple[np.ndarray, float, np.ndarray | None, int]:
    """Decode a whole video file.

    Returns ``frames`` uint8 ``[T, H, W, 3]``, the average frame rate, mono float32 audio ``[N]``
    (``None`` when the file has no audio stream) and its sample rate (``audio_rate`` if given,
    else the stream's own).
    """
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except Exception as err:
        raise MediaError(f"Could not open {path} ({err}); check that it is a complete video file.") from err
    with container:
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream.")
        vstream = container.streams.video[0]
        fps = float(vstream.average_rate) if vstream.average_rate else 0.0
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(vstream)]
    audio, rate = None, 0
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio, rate = _decode_audio_pyav(path)
            if audio_rate is not None and rate != audio_rate:
                audio, rate = resample(audio, rate, audio_rate), audio_rate
    if not frames:
        raise MediaError(f"{path} has a video stream with no decodable frames.")
    return np.stack(frames), fps, audio, rate


# -- video in memory (corpus shards) ---------------------------------------------------------------
def encode_video_bytes(frames: np.ndarray, fps: int, lossless: bool = True) -> bytes:
    """Frames ``uint8 [T, H, W, 3]`` as an mp4 in memory.

    ``lossless`` stores RGB exactly (libx264rgb, qp 0); otherwise yuv444p at crf 12 (~43 dB).
    One encoder thread keeps the bytes identical from run to run.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"Frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}.")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        if lossless:
            stream = container.add_stream("libx264rgb", rate=fps)
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": "medium"}
        else:
            stream = container.add_stream("libx264", rate=fps)
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "12", "preset": "medium"}
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.codec_context.thread_count = 1
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def decode_video_bytes(data: bytes) -> np.ndarray:
    """Frames ``uint8 [T, H, W, 3]`` from an in-memory video file."""
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise MediaError("The stored video has no frames; the shard is damaged, so regenerate it.")
    return np.stack(frames)


# -- contact sheets ---------------------------------------------------------------------------------
def contact_sheet(frames: list[np.ndarray], columns: int | None = None, captions: list[str] | None = None,
                  background: tuple[int, int, int] = (20, 20, 24)) -> np.ndarray:  # fmt: skip
    """Frames uint8 ``[H, W, 3]`` of one size in a grid of ``columns`` (default: one row), each under its
    caption when ``captions`` are given; returns the sheet uint8 ``[rows * (H + caption), columns * W, 3]``."""
    from PIL import Image, ImageDraw, ImageFont

    columns = columns or len(frames)
    height, width = frames[0].shape[:2]
    strip = 14 if captions else 0  # caption strip above each frame, pixels
    rows = -(-len(frames) // columns)
    sheet = Image.new("RGB", (columns * width, rows * (height + strip)), background)
    font = ImageFont.load_default(size=11) if captions else None
    for index, frame in enumerate(frames):
        x, y = (index % columns) * width, (index // columns) * (height + strip)
        sheet.paste(Image.fromarray(np.asarray(frame, dtype=np.uint8)), (x, y + strip))
        if captions:  # drawn on the frame's own strip, so a long caption is cut at the frame's edge
            label = Image.new("RGB", (width, strip), background)
            ImageDraw.Draw(label).text((3, 1), captions[index], fill=(230, 230, 230), font=font)
            sheet.paste(label, (x, y))
    return np.asarray(sheet)
