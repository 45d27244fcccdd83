"""Every format `higgs say`, `higgs serve` and `higgs batch` write, decoded and compared
with the library's PCM of the same text and seed: wav, flac and raw pcm exactly at 16
bits, mp3 and opus by correlation. A silent, cut or shifted file fails.

The tiny codec's output is nearly the same 200 Hz buzz whatever the codes (two seeds
differ by ~-51 dB), so only the exact formats can tell one seed's audio from another's;
mp3 and opus are checked for the audio's presence, level, length and alignment."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from starlette.testclient import TestClient

from higgs_cli.main import cli
from higgs_cli.output import FORMATS, STREAMABLE, encode, pcm16
from higgs_cli.serve import Limits, create_app
from higgs_cli.voices import VoiceStore

RATE = 24000
FRAMES = 25  # steered: every generation runs 25 frames, 0.96 s of audio
TEXT, SEED = "Good morning.", 3
EXACT = ("wav", "flac", "pcm")
CONTAINERS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "opus": "OGG"}
# The codec's delay is looked for within +-100 ms. libsndfile removes both encoders'
# delay and padding (LAME's gapless tag, Opus pre-skip and end granule): measured, both
# decode to the PCM's exact length, best aligned at lag 0. The length may still be off
# by one MPEG-2 layer III frame (576 samples at 24 kHz) in another build.
WINDOW = RATE // 10
LENGTH_SLACK = 576
# Each 100 ms block of the aligned audio (the last one takes the remainder) must
# correlate with the PCM's at least this much, at an rms within these ratios of it.
# Measured on 0.44-1.56 s clips of four texts and seeds: mp3 (~78 kbit/s) blocks
# correlate 0.988-0.999 at rms ratios 0.988-1.001. Opus (~45 kbit/s) keeps only the
# band under ~8 kHz for its first ~0.35 s, while ~70% of this buzz's energy lies above
# it: blocks there correlate 0.47-0.55 (0.92-0.98 later) at rms ratios 0.86-0.98.
BLOCK = RATE // 10
BOUNDS = {"mp3": (0.98, 0.9, 1.1), "opus": (0.35, 0.75, 1.25)}  # corr, rms ratio range

_references: dict = {}  # one PCM per (text, seed, streamed) for the whole module


@pytest.fixture
def reference(tts, steer):
    """``reference(text, seed, streamed=False)``: the library's float32 PCM for it, from
    ``Higgs.say`` or, as a stream is made, the pieces of ``Higgs.stream``."""
    steer(FRAMES)  # also steers what the CLI and the server generate in this test

    def get(text=TEXT, seed=SEED, streamed=False):
        key = (text, seed, streamed)
        if key not in _references:
            if streamed:
                _references[key] = np.concatenate(list(tts.stream(text, seed=seed)))
            else:
                _references[key] = tts.say(text, seed=seed).samples
            assert len(_references[key]) >= RATE // 2  # long enough to correlate
        return _references[key]

    return get


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """A file's bytes -> (int16 samples, sample rate), checking the container is fmt's."""
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return np.frombuffer(data, "<i2"), RATE
    info = sf.info(io.BytesIO(data))
    assert info.format == CONTAINERS[fmt] and info.channels == 1, info
    if fmt == "opus":
        assert info.subtype == "OPUS", info
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    return samples, rate


def assert_is_the_audio(decoded: np.ndarray, rate: int, pcm: np.ndarray, fmt: str):
    """``decoded`` (int16, as read from a ``fmt`` file) is ``pcm`` (float32 at 24 kHz)."""
    # Opus is compared at the file's rate: libsndfile decodes at the rate the OpusHead
    # records, the 24 kHz it was written at, so nothing is resampled.
    assert rate == RATE, f"{fmt}: {rate} Hz"
    want = np.frombuffer(pcm16(pcm), "<i2")
    if fmt in EXACT:
        assert len(decoded) == len(want), f"{fmt}: {len(decoded)} samples, not {len(want)}"
        assert np.array_equal(decoded, want), f"{fmt}: the 16-bit samples differ"
        return
    assert abs(len(decoded) - len(want)) <= LENGTH_SLACK, (
        f"{fmt}: {len(decoded)} samples, not {len(want)}"
    )
    got, want = decoded.astype(np.float64), want.astype(np.float64)
    lag = best_lag(got, want)
    start, end = max(0, -lag), min(len(want), len(got) - lag)
    got, want = got[start + lag : end + lag], want[start:end]
    min_corr, low, high = BOUNDS[fmt]
    for block in np.array_split(np.arange(len(want)), max(1, round(len(want) / BLOCK))):
        g, w = got[block], want[block]
        corr = float(g @ w) / max(float(np.sqrt((g @ g) * (w @ w))), 1e-9)
        level = float(np.sqrt((g @ g) / max(w @ w, 1e-9)))
        where = f"{fmt} at lag {lag}, {block[0] / RATE:.2f}-{(block[-1] + 1) / RATE:.2f} s"
        assert corr >= min_corr, f"{where}: correlation {corr:.3f} < {min_corr}"
        assert low <= level <= high, f"{where}: rms ratio {level:.3f} outside [{low}, {high}]"


def best_lag(got: np.ndarray, want: np.ndarray) -> int:
    """The lag L within +-WINDOW at which got[t + L] best matches want[t]: the peak of
    their cross-correlation over the energy of the part of ``want`` it covers. So a lag
    that leaves out silence (a codec's delay) scores higher, one that leaves out audio
    does not: normalised by ``got``'s part too, the edge of the window would win, where
    it leaves out opus's roughly coded start for another period of this buzz."""
    n = len(got) + len(want)
    dots = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(want, n)), n)
    lags = np.arange(-WINDOW, WINDOW + 1)
    start = np.maximum(0, -lags)
    end = np.maximum(start, np.minimum(len(want), len(got) - lags))
    energy = np.concatenate([[0.0], np.cumsum(want**2)])
    covered = energy[end] - energy[start]
    return int(lags[np.argmax(dots[lags % n] / np.sqrt(np.maximum(covered, 1e-9)))])


# -- the helper rejects what is not the audio ---------------------------------------------


def shifted(pcm, n):
    """The audio n samples late, at the same length."""
    return np.concatenate([np.zeros(n, pcm.dtype), pcm[:-n]])


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_the_comparison_rejects_what_is_not_the_audio(reference, fmt):
    pcm = reference()
    half = pcm[: len(pcm) // 2]
    bad = {
        "silence": np.zeros_like(pcm),
        "a half-length copy": half,
        "a half, then silence": np.concatenate([half, np.zeros(len(pcm) - len(half), pcm.dtype)]),
        "a copy shifted beyond the window": shifted(pcm, 2 * WINDOW),
        "a copy 20 dB quieter": pcm / 10,
    }
    if fmt in EXACT:  # lossy codecs cannot tell the tiny codec's seeds apart (see above)
        other = reference(seed=SEED + 1)
        assert len(other) == len(pcm)
        bad["another seed's audio"] = other

    def taken_for_the_audio(samples):
        try:
            assert_is_the_audio(*decode(encode(samples, RATE, fmt), fmt), pcm, fmt)
        except AssertionError:
            return False
        return True

    assert taken_for_the_audio(pcm)  # the real one passes, through the real encoder
    if fmt not in EXACT:  # as does a delay the window allows
        assert taken_for_the_audio(shifted(pcm, WINDOW // 2))
    assert [what for what, samples in bad.items() if taken_for_the_audio(samples)] == []


# -- higgs say ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_say_writes_the_audio(home, tmp_path, reference, fmt, stream):
    out = tmp_path / f"out.{fmt}"
    args = ["say", TEXT, "-o", str(out), "--seed", str(SEED), "-q"]
    r = CliRunner().invoke(cli, args + (["--stream"] if stream else []))
    assert r.exit_code == 0, r.stderr
    assert_is_the_audio(*decode(out.read_bytes(), fmt), reference(streamed=stream), fmt)


@pytest.mark.parametrize("fmt", STREAMABLE)
def test_say_streams_the_audio_to_stdout(home, reference, fmt):
    args = ["say", TEXT, "-o", "-", "--format", fmt, "--seed", str(SEED), "--stream", "-q"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.stderr
    assert_is_the_audio(*decode(r.stdout_bytes, fmt), reference(streamed=True), fmt)


# -- higgs serve -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, stream",
    [*((fmt, False) for fmt in FORMATS), *((fmt, True) for fmt in STREAMABLE)],
)
def test_serve_answers_with_the_audio(tts, tmp_path, monkeypatch, reference, fmt, stream):
    monkeypatch.setattr(tts, "voices", VoiceStore(tmp_path / "voices"))
    body = {"input": TEXT, "response_format": fmt, "seed": SEED, "stream": stream}
    with TestClient(create_app(tts, limits=Limits())) as c:
        r = c.post("/v1/audio/speech", json=body)
    assert r.status_code == 200, r.text
    assert_is_the_audio(*decode(r.content, fmt), reference(streamed=stream), fmt)


# -- higgs batch -------------------------------------------------------------------------


def test_batch_writes_the_audio(home, tmp_path, reference):
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"id": fmt, "text": TEXT, "seed": SEED, "format": fmt} for fmt in FORMATS]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["batch", str(manifest), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.stderr
    for fmt in FORMATS:
        assert_is_the_audio(*decode((out / f"{fmt}.{fmt}").read_bytes(), fmt), reference(), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_speech_save_writes_the_format_its_name_says(tts, reference, tmp_path, fmt):
    speech = tts.say(TEXT, seed=SEED)
    path = speech.save(tmp_path / f"out.{fmt}")
    assert path == tmp_path / f"out.{fmt}"
    assert_is_the_audio(*decode(path.read_bytes(), fmt), reference(), fmt)


def test_speech_save_refuses_what_the_command_line_refuses(tts, tmp_path):
    from higgs_cli.output import OutputError

    speech = tts.say(TEXT, seed=SEED)
    with pytest.raises(OutputError, match=r"\.m4a is not a format higgs writes"):
        speech.save(tmp_path / "out.m4a")
    with pytest.raises(OutputError, match=r"is named \.wav but --format is flac"):
        speech.save(tmp_path / "out.wav", format="flac")
    with pytest.raises(OutputError, match="does not exist"):
        speech.save(tmp_path / "no" / "out.wav")
    assert speech.save(tmp_path / "raw", format="pcm").read_bytes() == pcm16(speech.samples)
