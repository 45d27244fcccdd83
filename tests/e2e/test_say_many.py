"""say_many / stream_many: many requests decoded together, each as it would be alone."""

import numpy as np
import pytest

from higgs_cli.settings import Request, Settings

TEXTS = [
    "Good morning. How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "[SPEAKER0] Hello there.\n[SPEAKER1] Hi! Nice to meet you.",
    "One. Two. Three. Four.",
]


def requests():
    return [
        Request(TEXTS[0], settings=Settings(seed=1, max_seconds=3)),
        Request(TEXTS[1], settings=Settings(seed=2, max_seconds=4).but(temperature=0.9)),
        Request(TEXTS[2], settings=Settings(seed=3, max_seconds=4, chunk_words=3)),
        Request(TEXTS[3], settings=Settings(seed=4, max_seconds=2).but(temperature=0, top_k=0)),
    ]


@pytest.mark.parametrize("max_batch", [1, 4])
def test_each_speech_equals_its_own_say(tts, max_batch):
    alone = [tts.say(r) for r in requests()]
    together = tts.say_many(requests(), max_batch=max_batch)
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a.codes, b.codes)
        assert np.array_equal(a.samples, b.samples)
        assert a.chunks == b.chunks and a.stop_reasons == b.stop_reasons


def test_stream_many_interleaves_and_adds_up(tts):
    stream = tts.stream_many(requests(), max_batch=4)
    pieces: dict[int, list] = {}
    order = []
    for i, pcm in stream:
        pieces.setdefault(i, []).append(pcm)
        order.append(i)
    assert set(order) == {0, 1, 2, 3}
    assert order != sorted(order)  # interleaved, not one request after another
    for i, speech in enumerate(stream.speeches):
        assert np.array_equal(np.concatenate(pieces[i]), speech.samples)
        alone = tts.stream(requests()[i])
        assert np.array_equal(np.concatenate(list(alone)), speech.samples)


def test_a_bad_request_fails_alone(tts):
    # As `higgs batch` records a bad row: each failing request has its exception in its
    # place (no text, an unknown voice, unreadable reference audio), the rest are spoken.
    good = requests()
    mixed = [
        good[0],
        Request("   "),
        Request("Hello.", voices=("nobody_by_that_name",)),
        good[1],
        Request("Hello.", refs=(("/no/such/reference.wav", "Hello."),)),
        "",
    ]
    got = tts.say_many(mixed, max_batch=4)
    assert len(got) == len(mixed)
    for i in (1, 5):
        assert isinstance(got[i], Exception) and "no text" in str(got[i]), got[i]
    assert isinstance(got[2], Exception) and "nobody_by_that_name" in str(got[2])
    assert isinstance(got[4], Exception) and "/no/such/reference.wav" in str(got[4])
    for i, want in ((0, good[0]), (3, good[1])):
        assert np.array_equal(got[i].samples, tts.say(want).samples), i
    # one request alone still raises its error
    with pytest.raises(Exception, match="no text"):
        list(tts.stream("   "))


def test_say_and_stream_name_every_option_in_their_signatures(tts):
    # An IDE or help() shows what say/stream take: every setting, each sampling field,
    # the voices; a misspelt option is Python's own TypeError.
    import dataclasses
    import inspect

    from higgs_sampling import SamplingParams

    settings = {f.name for f in dataclasses.fields(Settings)} - {"sampling"}
    sampling = {f.name for f in dataclasses.fields(SamplingParams)}
    for method in (tts.say, tts.stream):
        names = set(inspect.signature(method).parameters)
        assert settings | sampling | {"voice", "voices", "refs", "settings"} <= names
        assert not any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(method).parameters.values()
        )
    with pytest.raises(TypeError, match="temprature"):
        tts.say("Hi.", temprature=0.5)
    # An option left out keeps the settings' value; scene=None is no scene.
    base = Settings(seed=3, max_seconds=1, scene="Audio is recorded from a quiet room.")
    same = tts.say("Hi.", settings=base)
    assert np.array_equal(tts.say("Hi.", settings=base, top_k=None).samples, same.samples)
    plain = tts.say("Hi.", settings=base.but(scene=None))
    assert np.array_equal(tts.say("Hi.", settings=base, scene=None).samples, plain.samples)
    assert not np.array_equal(plain.samples, same.samples)
