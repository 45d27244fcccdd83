import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from higgs_cli.voices import (
    BUILTINS,
    DamagedVoice,
    UnknownVoice,
    VoiceError,
    VoiceExists,
    VoiceStore,
    data_dir,
    fingerprint,
)


@pytest.fixture
def store(tmp_path):
    return VoiceStore(tmp_path / "voices")


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "me.wav"
    path.write_bytes(b"RIFF....WAVE")  # the store copies bytes; the pipeline checks audio
    return path


def leftovers(store):
    return [p.name for p in store.root.iterdir() if p.name.startswith(".")]


def test_builtins_are_listed_before_any_pin(store):
    names = [v.name for v in store.list()]
    assert set(BUILTINS) <= set(names)
    v = store.get("en_woman")
    assert v.kind == "builtin" and v.description == BUILTINS["en_woman"].description
    assert store.codes("en_woman", "pin-x", 8) is None


def test_add_get_remove_roundtrip(store, wav):
    codes = np.arange(8 * 5).reshape(8, 5)
    store.add("alice", wav, "  Hello   there. ", codes=codes, key="codec-1")
    v = store.get("alice")
    assert v.kind == "recording" and v.transcript == "Hello there."
    assert v.audio.read_bytes() == wav.read_bytes()
    np.testing.assert_array_equal(store.codes("alice", "codec-1", 8), codes)
    assert store.codes("alice", "codec-2", 8) is None  # another codec: encode again
    assert "alice" in store.names()
    # A new store on the same folder (a restart) sees the same voice.
    assert VoiceStore(store.root).get("alice").transcript == "Hello there."
    store.remove("alice")
    assert "alice" not in store.names()
    with pytest.raises(VoiceError, match="unknown voice 'alice'"):
        store.get("alice")
    assert leftovers(store) == []


@pytest.mark.parametrize(
    "name", ["../evil", "a/b", ".hidden", "", "x" * 65, "sp ace", "semi;colon"]
)
def test_names_with_path_tricks_are_refused(store, wav, name):
    with pytest.raises(VoiceError, match="invalid voice name"):
        store.add(name, wav, "text")
    with pytest.raises(VoiceError, match="invalid voice name"):
        store.get(name)


def test_add_refuses_to_clobber_and_builtin_names(store, wav):
    store.add("bob", wav, "one")
    with pytest.raises(VoiceError, match="exists"):
        store.add("bob", wav, "two")
    assert store.get("bob").transcript == "one"
    store.add("bob", wav, "two", force=True)
    assert store.get("bob").transcript == "two"
    with pytest.raises(VoiceError, match="built-in"):
        store.add("en_man", wav, "text")
    with pytest.raises(VoiceError, match="transcript is empty"):
        store.add("carol", wav, "   ")
    assert leftovers(store) == []


def test_a_failed_add_leaves_nothing(store, tmp_path, wav):
    store.root.mkdir(parents=True)
    with pytest.raises(VoiceError, match=r"no audio file .*missing\.wav"):
        store.add("dave", tmp_path / "missing.wav", "words")
    blocked = VoiceStore(tmp_path / "a-file")  # a store that cannot be made: one VoiceError
    (tmp_path / "a-file").write_text("")
    with pytest.raises(VoiceError, match="cannot write the voice store"):
        blocked.add("dave", wav, "words")
    assert not (store.root / "dave").exists()
    assert leftovers(store) == []


def test_damaged_and_foreign_entries_are_reported(store, wav):
    store.add("erin", wav, "words", codes=np.zeros((8, 3)), key="k")
    (store.root / "erin" / "voice.json").write_text("{not json")
    with pytest.raises(DamagedVoice, match=r"'erin' is damaged") as caught:
        store.get("erin")
    assert caught.value.name == "erin"
    listed = {v.name: v for v in store.list()}
    assert listed["erin"].problem and "damaged" in listed["erin"].problem

    (store.root / "foreign").mkdir()
    (store.root / "foreign" / "voice.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(VoiceError, match="not a voice entry"):
        store.get("foreign")
    store.remove("foreign")  # a damaged entry can still be removed
    assert "foreign" not in store.names()


def test_damaged_codes_raise(store, wav):
    store.add("fay", wav, "words", codes=np.zeros((8, 3)), key="k")
    path = store.root / "fay" / "codes-k.npy"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(VoiceError, match="damaged"):
        store.codes("fay", "k", 8)
    store.save_codes("fay", "k", np.zeros((4, 3)))
    with pytest.raises(VoiceError, match="damaged"):
        store.codes("fay", "k", 8)  # made for a 4-codebook codec


def test_pins_are_keyed(store):
    codes = np.ones((8, 6), np.int32)
    store.pin("en_man", "pin-a", codes, "The pin sentence.")
    np.testing.assert_array_equal(store.codes("en_man", "pin-a", 8), codes)
    assert store.codes("en_man", "pin-b", 8) is None
    v = store.get("en_man")
    assert v.kind == "builtin" and v.transcript == "The pin sentence."
    store.remove("en_man")
    assert store.codes("en_man", "pin-a", 8) is None
    with pytest.raises(VoiceError, match="no pin"):
        store.remove("en_man")


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HIGGS_HOME", str(tmp_path / "h"))
    assert data_dir() == tmp_path / "h"
    assert VoiceStore().root == tmp_path / "h" / "voices"


def test_fingerprints_tell_checkpoints_apart(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, size in ((a, 10), (b, 11)):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"x" * size)
    assert fingerprint(a) != fingerprint(b)
    (b / "model.safetensors").write_bytes(b"x" * 10)
    assert fingerprint(a) == fingerprint(b)  # same config, same weight files


def test_two_adds_of_one_name_one_wins(store, tmp_path):
    store.root.mkdir(parents=True)
    wavs = []
    for i in range(6):
        wavs.append(tmp_path / f"take{i}.wav")
        wavs[-1].write_bytes(f"RIFF{i}".encode())
    results, barrier = {}, threading.Barrier(len(wavs))

    def add(i):
        barrier.wait()
        try:
            store.add("gina", wavs[i], f"take {i}")
            results[i] = "added"
        except VoiceExists:
            results[i] = "exists"

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(wavs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r == "added"]
    assert len(winners) == 1 and len(results) == len(wavs)
    v = store.get("gina")  # the stored entry is the winner's, whole
    assert v.transcript == f"take {winners[0]}"
    assert v.audio.read_bytes() == wavs[winners[0]].read_bytes()
    assert leftovers(store) == []


def test_force_replaces_and_leaves_nothing_aside(store, wav, tmp_path):
    store.add("hal", wav, "first", codes=np.zeros((8, 3)), key="k")
    with pytest.raises(VoiceExists, match="'hal' already exists"):
        store.add("hal", wav, "second")
    other = tmp_path / "other.flac"
    other.write_bytes(b"fLaC")
    store.add("hal", other, "second", force=True)
    v = store.get("hal")
    assert v.transcript == "second" and v.audio.name == "audio.flac"
    assert store.codes("hal", "k", 8) is None  # the old recording's codes went with it
    assert sorted(p.name for p in (store.root / "hal").iterdir()) == ["audio.flac", "voice.json"]
    assert leftovers(store) == []


def test_a_crashed_writers_leftovers_are_cleaned(store, wav):
    store.root.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    for kind in ("add", "old", "rm"):
        junk = store.root / f".{kind}-{pid}-abc" / "ivy"
        junk.mkdir(parents=True)
        (junk / "voice.json").write_text("{}")
    mine = store.root / f".add-{os.getpid()}-live"  # a live writer's staging stays
    mine.mkdir()
    assert "ivy" not in store.names()  # leftovers never look like voices
    store.add("ivy", wav, "words")
    assert leftovers(store) == [mine.name]


@pytest.mark.parametrize(
    "damage",
    ["npz", "out_of_range", "wrong_dtype", "empty", "pickle"],
)
def test_damaged_codes_of_any_kind_are_one_error(store, wav, damage):
    store.add("jo", wav, "words", codes=np.zeros((8, 3)), key="k")
    path = store.root / "jo" / "codes-k.npy"
    if damage == "npz":
        with open(path, "wb") as f:
            np.savez(f, a=np.zeros((8, 3), np.uint16))
    elif damage == "out_of_range":
        np.save(path, np.full((8, 3), 1024, np.uint16))
    elif damage == "wrong_dtype":
        np.save(path, np.zeros((8, 3), np.float32))
    elif damage == "empty":
        np.save(path, np.zeros((8, 0), np.uint16))
    else:
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DamagedVoice, match=r"'jo' is damaged .*stored codes"):
        store.codes("jo", "k", 8)
    store.save_codes("jo", "k", np.ones((8, 3)))  # encoding again repairs it
    np.testing.assert_array_equal(store.codes("jo", "k", 8), np.ones((8, 3)))


def test_a_transcript_that_is_not_text_is_damage(store, wav):
    store.add("kim", wav, "words")
    meta = store.root / "kim" / "voice.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "transcript": ["a"]}))
    with pytest.raises(DamagedVoice, match="transcript is not text"):
        store.get("kim")
    assert store.get("kim", strict=False).kind == "damaged"
    assert store.remove("kim") == "removed"


def test_remove_says_what_it_did(store):
    with pytest.raises(UnknownVoice, match="no pin to forget"):
        store.remove("en_woman")
    store.pin("en_woman", "pin-a", np.ones((8, 2)), "The pin sentence.")
    assert store.remove("en_woman") == "pin forgotten"
    assert store.get("en_woman").kind == "builtin"
    with pytest.raises(UnknownVoice, match="unknown voice 'nobody'"):
        store.remove("nobody")


def test_damaged_codes_are_reported_without_numpys_advice(tmp_path):
    # An object array (what a pickle makes) is damage, not something to allow.
    from higgs_cli.voices import DamagedVoice, VoiceStore

    store = VoiceStore(tmp_path / "voices")
    store.pin("en_man", "pin-x", np.ones((8, 3)), "The pin sentence.")
    [path] = (tmp_path / "voices" / "en_man").glob("codes-pin-x.npy")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DamagedVoice) as info:
        store.codes("en_man", "pin-x", 8)
    assert "not a plain array of codes" in str(info.value)
    assert "allow_pickle" not in str(info.value)
