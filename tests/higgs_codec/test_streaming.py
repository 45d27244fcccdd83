"""The stream decoder against a whole-utterance decode."""

import mlx.core as mx
import numpy as np
import pytest

# the lower bound the stream must meet; it is exact in principle (measured: bit-equal
# on the CPU), the bound leaves room for other backends' accumulation order
MIN_SNR_DB = 80.0

pytestmark = pytest.mark.usefixtures("gemm_backend")


def stream(codec, codes, sizes):
    dec = codec.stream_decoder()
    parts, first, start = [], None, 0
    for n in sizes:
        out = np.array(dec.push(codes[:, start : start + n]))
        start += n
        if first is None and out.size:
            first = start
        parts.append(out)
    assert start == codes.shape[1]
    parts.append(np.array(dec.flush()))
    return np.concatenate(parts), first, dec


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 40])
def test_stream_matches_whole_decode(codec, chunk, snr_db):
    codes = np.random.default_rng(chunk).integers(0, 1024, (8, 40))
    whole = np.array(codec.decode(codes))
    sizes = [chunk] * (40 // chunk) + ([40 % chunk] if 40 % chunk else [])
    got, _, _ = stream(codec, codes, sizes)
    assert got.shape == whole.shape
    assert snr_db(got, whole) >= MIN_SNR_DB


def test_stream_with_irregular_chunks_and_empty_pushes(codec, snr_db):
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 1024, (8, 53))
    sizes = [0, 1, 5, 0, 2, 11, 1, 1, 17, 0, 15]
    got, _, _ = stream(codec, codes, sizes)
    assert snr_db(got, np.array(codec.decode(codes))) >= MIN_SNR_DB


def test_first_audio_and_lookahead_are_bounded(codec):
    codes = np.random.default_rng(3).integers(0, 1024, (8, 30))
    _, first, dec = stream(codec, codes, [1] * 30)
    assert first == dec.first_audio_frames <= 12
    assert dec.lookahead_frames <= 12
    # in steady state, each frame pushed releases exactly one frame of samples
    dec2 = codec.stream_decoder()
    counts = [dec2.push(codes[:, i : i + 1]).size for i in range(30)]
    assert counts[first:] == [960] * (30 - first)
    assert sum(counts) >= (30 - dec2.lookahead_frames) * 960
    assert sum(counts) + dec2.flush().size == 30 * 960


def test_stream_shorter_than_the_lookahead(codec, snr_db):
    codes = np.random.default_rng(4).integers(0, 1024, (8, 2))
    got, first, _ = stream(codec, codes, [1, 1])
    assert first is None  # nothing is final before the end
    assert snr_db(got, np.array(codec.decode(codes))) >= MIN_SNR_DB


def test_state_stays_bounded(codec):
    """Linear total work: what a stream keeps between pushes does not grow with length."""
    dec = codec.stream_decoder()
    codes = np.random.default_rng(5).integers(0, 1024, (8, 120))

    def held(chain):
        total = 0
        for s in chain.stages:
            for name in ("buffer", "prev", "pending"):
                a = getattr(s, name, None)
                total += 0 if a is None else a.size
            if hasattr(s, "inner"):
                total += held(s.inner)
        return total

    sizes = []
    for i in range(0, 120, 4):
        dec.push(codes[:, i : i + 4])
        sizes.append(held(dec.chain))
    assert max(sizes[5:]) == min(sizes[5:])


def test_stream_errors(codec):
    from higgs_codec import CodecError

    dec = codec.stream_decoder()
    with pytest.raises(CodecError, match="must lie in"):
        dec.push(np.full((8, 2), 2000))
    with pytest.raises(CodecError, match="must lie in"):
        dec.push(mx.full((8, 2), -1))
    with pytest.raises(CodecError, match="integers"):
        dec.push(np.zeros((8, 2), np.float32))
    with pytest.raises(CodecError, match="shaped"):
        dec.push(np.zeros(8, np.int32))
    with pytest.raises(CodecError, match="shaped"):
        dec.push(mx.zeros((9, 0), mx.int32))
    dec.push(np.zeros((8, 3), np.int32))
    assert dec.flush().size == 3 * 960
    with pytest.raises(RuntimeError, match="flushed"):
        dec.push(np.zeros((8, 1), np.int32))
    assert codec.stream_decoder().flush().size == 0
