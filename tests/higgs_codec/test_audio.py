"""Audio files: what reads, what writes, and the errors for what does not."""

import io

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from higgs_codec import CodecError, CodecFileNotFoundError, read_audio, write_audio


def tone(n, sr, channels=1):
    t = np.arange(n) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)])


@pytest.mark.parametrize("fmt", ["wav", "flac"])
@pytest.mark.parametrize("channels", [1, 2])
def test_write_then_read(tmp_path, fmt, channels):
    wave = tone(4321, 44100, channels).astype(np.float32)
    path = tmp_path / f"x.{fmt}"
    write_audio(path, wave if channels == 2 else wave[0], 44100)
    assert sf.info(str(path)).format == fmt.upper()
    got, sr = read_audio(path)
    assert sr == 44100 and got.dtype == np.float32 and got.shape == (channels, 4321)
    assert np.abs(got - wave).max() <= 1 / 32768 + 1e-7  # 16-bit


def test_write_mlx_samples_to_a_file_object():
    buf = io.BytesIO()
    write_audio(buf, mx.array(tone(2400, 24000)[0].astype(np.float32)), 24000, format="flac")
    buf.seek(0)
    got, sr = read_audio(buf)
    assert sr == 24000 and got.shape == (1, 2400)


def test_write_clips_out_of_range_samples(tmp_path):
    write_audio(tmp_path / "c.wav", np.array([1.5, -2.0, 0.25], np.float32), 8000)
    got, _ = read_audio(tmp_path / "c.wav")
    assert np.allclose(got[0], [32767 / 32768, -1.0, 0.25])


def test_read_ogg(tmp_path):
    wave = tone(16000, 16000)[0]
    sf.write(str(tmp_path / "x.ogg"), wave, 16000, format="OGG", subtype="VORBIS")
    got, sr = read_audio(tmp_path / "x.ogg")
    assert sr == 16000 and got.shape[0] == 1 and abs(got.shape[1] - 16000) < 1000
    n = min(got.shape[1], 16000)
    assert np.corrcoef(got[0, 1000 : n - 1000], wave[1000 : n - 1000])[0, 1] > 0.99


def test_read_errors(tmp_path):
    with pytest.raises(CodecFileNotFoundError, match="not found"):
        read_audio(tmp_path / "absent.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(CodecError, match="could not read audio"):
        read_audio(corrupt)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 1), np.float32), 24000)
    with pytest.raises(CodecError, match="no samples"):
        read_audio(empty)


def test_write_errors(tmp_path):
    with pytest.raises(CodecError, match="mp3"):
        write_audio(tmp_path / "x.wav", np.zeros(10), 24000, format="mp3")
    with pytest.raises(CodecError, match="NaN"):
        write_audio(tmp_path / "x.wav", np.array([0.0, np.nan]), 24000)
    with pytest.raises(CodecError, match="shape"):
        write_audio(tmp_path / "x.wav", np.zeros(0), 24000)
    with pytest.raises(CodecError, match="sample rate"):
        write_audio(tmp_path / "x.wav", np.zeros(10), 0)
