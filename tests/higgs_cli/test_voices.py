import json

import numpy as np
import pytest

from higgs_cli.voices import BUILTINS, VoiceError, VoiceStore, data_dir, fingerprint


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


def test_a_failed_add_leaves_nothing(store, tmp_path):
    store.root.mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        store.add("dave", tmp_path / "missing.wav", "words")
    assert not (store.root / "dave").exists()
    assert leftovers(store) == []


def test_damaged_and_foreign_entries_are_reported(store, wav):
    store.add("erin", wav, "words", codes=np.zeros((8, 3)), key="k")
    (store.root / "erin" / "voice.json").write_text("{not json")
    with pytest.raises(VoiceError, match=r"erin.*damaged.*higgs voices remove erin"):
        store.get("erin")
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
