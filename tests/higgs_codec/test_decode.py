"""Decode parity with transformers' HiggsAudioV2TokenizerModel (fixtures, float32)."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from higgs_codec import CodecError

# the fixture waves (see scripts/make_codec_fixtures.py)
WAVES = ["mono24k_25f", "mono24k_20f", "mono24k_short", "mono24k_pad", "stereo16k", "stereo44k"]

DECODED = [*WAVES, "random1", "random37"]

pytestmark = pytest.mark.usefixtures("gemm_backend")


@pytest.mark.parametrize("name", DECODED)
def test_decode_matches_reference(codec, ref, name, rel_err):
    codes = ref[f"{name}/codes"]
    audio = codec.decode(codes)
    assert isinstance(audio, mx.array) and audio.dtype == mx.float32
    assert audio.shape == (codes.shape[1] * 960,)
    assert rel_err(audio, ref[f"{name}/decoded"]) <= 1e-4


def test_decode_has_no_sample_shift(codec, ref, rel_err):
    """A one-sample shift of the transposed-conv padding would be far off the bar."""
    want = ref["random37/decoded"]
    got = np.array(codec.decode(ref["random37/codes"]))
    assert rel_err(got, want) <= 1e-4
    assert rel_err(np.roll(got, 1)[1:-1], want[1:-1]) > 1e-2
    assert rel_err(np.roll(got, -1)[1:-1], want[1:-1]) > 1e-2


def test_decode_accepts_numpy_and_mlx_integer_codes(codec, ref):
    codes = ref["random37/codes"]
    a = codec.decode(codes.astype(np.int64))
    b = codec.decode(mx.array(codes).astype(mx.uint16))
    assert np.array_equal(np.array(a), np.array(b))


def test_decode_with_fewer_codebooks_uses_the_first_ones(codec, ref):
    """Like the reference, K' < K codes decode through the first K' quantizers."""
    codes = ref["random37/codes"]
    full = np.array(codec.decode(codes))
    part = np.array(codec.decode(codes[:4]))
    assert part.shape == full.shape and not np.allclose(part, full)


# the reference's decode of each case's codes[:k] (scripts/make_codec_partial_fixtures.py)
PARTIAL_NPZ = Path(__file__).resolve().parents[1] / "fixtures" / "codec" / "partial.npz"
PARTIAL = ["mono24k_25f", "random37"]


@pytest.fixture(scope="module")
def partial():
    with np.load(PARTIAL_NPZ) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize("name", PARTIAL)
def test_partial_decode_matches_reference(codec, ref, partial, name, k, rel_err):
    """codes[:k] decode as the reference decodes them (its first k quantizers), whole
    and streamed; the 1e-4 bar is the full decode's, and the gap between neighbouring
    k is 2e-2 to 7e-2, so dropping or reordering a quantizer cannot pass."""
    codes = ref[f"{name}/codes"][:k]
    want = partial[f"{name}/k{k}/decoded"]
    assert rel_err(codec.decode(codes), want) <= 1e-4
    dec = codec.stream_decoder()
    parts = [np.array(dec.push(codes[:, i : i + 6])) for i in range(0, codes.shape[1], 6)]
    streamed = np.concatenate([*parts, np.array(dec.flush())])
    assert rel_err(streamed, want) <= 1e-4


def test_properties(codec):
    assert codec.sample_rate == 24000
    assert codec.frame_rate == 25
    assert codec.hop_length == 960
    assert codec.num_codebooks == 8
    assert codec.codebook_size == 1024


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.zeros((8, 0), np.int32), "no frames"),
        (np.zeros((9, 3), np.int32), r"\[K, T\]"),
        (np.zeros((3,), np.int32), r"\[K, T\]"),
        (np.full((8, 3), 1024), r"\[0, 1024\)"),
        (np.full((8, 3), -1), r"\[0, 1024\)"),
        (np.zeros((8, 3), np.float32), "integers"),
    ],
)
def test_bad_codes_are_refused(codec, codes, message):
    with pytest.raises(CodecError, match=message):
        codec.decode(codes)


def test_long_decode_is_chunked_and_identical(codec, monkeypatch, rel_err):
    """Above DECODE_CHUNK_FRAMES the decode goes through the stream decoder in chunks."""
    import higgs_codec.model as model

    codes = np.random.default_rng(0).integers(0, 1024, (8, 60))
    whole = np.array(codec.decode(codes))
    monkeypatch.setattr(model, "DECODE_CHUNK_FRAMES", 16)
    chunked = np.array(codec.decode(codes))
    assert chunked.shape == whole.shape == (60 * 960,)
    assert rel_err(chunked, whole) <= 1e-4


def test_snake_variants_agree():
    """The CPU Snake (polynomial sin^2) and the GPU one (mx.sin) agree to float32 rounding."""
    from higgs_codec.dac import _snake_cpu, _snake_gpu

    rng = np.random.default_rng(0)
    x = mx.array((rng.standard_normal((1, 5000, 16)) * np.logspace(-3, 3, 16)).astype(np.float32))
    alpha = mx.array(rng.uniform(0.05, 5, 16).astype(np.float32))
    exact = np.array(x, np.float64) + np.sin(np.array(alpha * x, np.float64)) ** 2 / (
        np.array(alpha, np.float64) + 1e-9
    )
    # float32 rounding of x, and of sin^2 (<= 1) scaled by 1 / alpha
    bound = 2e-7 * np.abs(np.array(x)) + 1e-6 / np.array(alpha) + 1e-7
    for snake in (_snake_cpu, _snake_gpu):
        got = np.array(snake(x, alpha), np.float64)
        assert (np.abs(got - exact) <= bound).all()
