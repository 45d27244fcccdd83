"""The engine every way in runs: jobs by key, and what came of them, in order."""

import numpy as np
import pytest

from higgs_cli.engine import Audio, Done, Engine, Failed


class IdleBatch:
    """A batch with nothing to step (these jobs never submit a stream)."""

    busy = False
    running = 0


def speaking(pieces: int, fail: bool = False):
    def make(emit):
        for i in range(pieces):
            emit(np.full(3, i, np.float32))
            yield None  # waits a tick, as a job waits on its stream
        if fail:
            raise ValueError("this request is bad")
        return f"{pieces} pieces"

    return make


def run(engine):
    events = []
    while engine.pending:
        events += engine.tick()
    return events


def test_audio_then_done_or_failed_per_key_in_order():
    engine = Engine(IdleBatch())
    engine.add("a", speaking(2))
    engine.add("b", speaking(1, fail=True))
    events = run(engine)
    a = [e for e in events if e.key == "a"]
    b = [e for e in events if e.key == "b"]
    assert [type(e) for e in a] == [Audio, Audio, Done] and a[-1].result == "2 pieces"
    assert [int(e.pcm[0]) for e in a[:2]] == [0, 1]
    assert [type(e) for e in b] == [Audio, Failed] and "bad" in str(b[-1].error)
    with pytest.raises(ValueError, match="already running"):
        engine.add("c", speaking(1))
        engine.add("c", speaking(1))


def test_a_cancel_fails_its_request_or_forgets_it():
    engine = Engine(IdleBatch())
    engine.add("late", speaking(5))
    engine.add("gone", speaking(5))
    engine.add("fine", speaking(1))
    engine.tick()
    engine.cancel("late", TimeoutError("too slow"))
    engine.cancel("gone")
    events = run(engine)
    assert [(type(e), e.key) for e in events if not isinstance(e, Audio)] == [
        (Failed, "late"),
        (Done, "fine"),
    ]
    assert not any(e.key == "gone" for e in events)
