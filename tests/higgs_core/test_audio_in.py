"""Audio in (``<|AUDIO|>``) positions, as the release treats them when its config sets
``encode_audio_in_tokens`` (the released checkpoint does).

``HiggsAudioModel.forward`` embeds audio-in codes with the same ``_embed_audio_ids``
table as audio out, and ``merge_input_ids_with_audio_features`` marks them in
``audio_in_discrete_codes_mask``; the layers get ``audio_in_discrete_codes_mask |
audio_out_mask`` as their audio mask, so both kinds take the audio FFN path. The RAS
window reads ``audio_out_ids`` only. transformers 5.24 has no audio-in positions, so
there is no transformers fixture for this mode; these tests hold our model to those
rules of the original.
"""

import mlx.core as mx
import numpy as np
import pytest

from higgs_core import generate_frames
from higgs_sampling import RowSampler, SamplingParams

AIN, AOUT = 399, 400  # <|AUDIO|> and <|AUDIO_OUT|> in the tiny vocab


@pytest.fixture
def audio_in_model(models):
    model = models["tiny-original-sharded"]
    real = model.config
    model.config = real.replace(encode_audio_in_tokens=True)
    yield model
    model.config = real


def test_audio_in_positions_are_audio_out_positions_by_another_name(audio_in_model, ref):
    ids = ref["input_ids"][None]
    audio = ref["audio_ids"][None]
    _, want = audio_in_model.logits(ids, audio)
    swapped = np.where(ids == AOUT, AIN, ids)
    _, got = audio_in_model.logits(swapped, audio)
    assert mx.array_equal(got, want)  # same embedding rows, same FFN path, bit for bit


def test_without_the_flag_audio_in_is_an_ordinary_token(models, ref):
    model = models["tiny-original-sharded"]
    real = model.config
    assert real.encode_audio_in_tokens  # the tiny config, as the release's
    model.config = real.replace(encode_audio_in_tokens=False)  # as transformers' layout
    try:
        assert AIN not in model.config.audio_placeholder_ids
        with pytest.raises(ValueError, match="0 audio positions but 1 audio frames"):
            model.logits(np.array([[384, AIN, 12]]), np.zeros((1, 1, 8), np.int32))
    finally:
        model.config = real


def test_ras_history_is_what_the_caller_says(audio_in_model, ref, monkeypatch):
    seen = []
    start = RowSampler.start

    def spy(self, params, key, max_frames, history=None):
        seen.append(None if history is None else np.array(history))
        return start(self, params, key, max_frames, history)

    monkeypatch.setattr(RowSampler, "start", spy)
    ids, audio = ref["input_ids"], ref["audio_ids"]
    params = SamplingParams(temperature=0)
    for history in (None, audio[:5], np.zeros((0, 8), np.int32)):
        gen = generate_frames(
            audio_in_model, ids, audio, params=params, max_frames=2, history=history
        )
        list(gen)
    assert np.array_equal(seen[0], audio.T)  # by default, all of the prompt's audio
    assert np.array_equal(seen[1], audio[:5].T)
    assert seen[2] is None  # audio in only: nothing to look back on
