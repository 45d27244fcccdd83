"""Every field of a request reaches the audio: what the server, a `higgs batch`
manifest row or a `higgs say` flag asks for is what the library's `say` makes with
the same value, and differs from the default where the value changes the speech.

Each way in is compared with `Higgs.say` itself, never with another way in, so a field
that two routes both dropped would still fail here.
"""

import io
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from starlette.testclient import TestClient

from higgs_cli.main import cli
from higgs_cli.output import pcm16
from higgs_cli.serve import Limits, create_app

TEXT, SEED = "Good morning, how are you?", 7  # a seed whose speech RAS changes
# A field, as each way in spells it, and as `say` takes it.
#   (case id, server JSON, manifest fields, say flags, say keywords)
FIELDS = [
    ("voice", {"voice": "en_man"}, {"voice": "en_man"}, ["--voice", "en_man"], {"voice": "en_man"}),
    ("temperature", {"temperature": 0.9}, {"temperature": 0.9}, ["--temperature", "0.9"],
     {"temperature": 0.9}),
    ("top_k", {"top_k": 3}, {"top_k": 3}, ["--top-k", "3"], {"top_k": 3}),
    ("top_p", {"top_p": 0.3}, {"top_p": 0.3}, ["--top-p", "0.3"], {"top_p": 0.3}),
    ("seed", {"seed": 11}, {"seed": 11}, ["--seed", "11"], {"seed": 11}),
    ("scene", {"scene": "A windy beach."}, {"scene": "A windy beach."},
     ["--scene", "A windy beach."], {"scene": "A windy beach."}),
]  # fmt: skip
SERVER_ONLY = [
    ("voice_alias", {"voice": "echo"}, {"voice": "en_man"}),  # OpenAI's name for en_man
    ("voice_object", {"voice": {"id": "en_man"}}, {"voice": "en_man"}),
    ("instructions", {"instructions": "A windy beach."}, {"scene": "A windy beach."}),
    ("no_scene", {"scene": ""}, {"scene": None}),
]
SAY_ONLY = [
    ("ras_window", ["--ras-window", "0"], {"ras_window": 0}),
    ("ras_max_repeat", ["--ras-max-repeat", "1"], {"ras_max_repeat": 1}),
    ("chunk_words", ["--chunk-words", "2"], {"chunk_words": 2}),
    ("no_scene", ["--scene", ""], {"scene": None}),
]


@pytest.fixture(scope="module")
def said(tts):
    """``said(**keywords)``: the library's int16 samples for TEXT (cached)."""
    cache = {}

    def say(**keywords):
        keywords = {"seed": SEED, **keywords}
        key = json.dumps(keywords, sort_keys=True)
        if key not in cache:
            speech = tts.say(TEXT, **keywords)
            cache[key] = np.frombuffer(pcm16(speech.samples), "<i2")
        return cache[key]

    return say


def check(got: np.ndarray, said, keywords: dict):
    want = said(**keywords)
    assert np.array_equal(got, want), (len(got), len(want))
    assert not np.array_equal(want, said()), "the field must change this speech"


# the server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tts):
    with TestClient(create_app(tts, limits=Limits())) as c:
        yield c


def served(server, body: dict) -> np.ndarray:
    body = {"input": TEXT, "seed": SEED, "response_format": "pcm", **body}
    r = server.post("/v1/audio/speech", json=body)
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, "<i2")


@pytest.mark.parametrize(
    "body, keywords",
    [pytest.param(b, k, id=i) for i, b, _, _, k in FIELDS]
    + [pytest.param(b, k, id=i) for i, b, k in SERVER_ONLY],
)
def test_every_speech_field_reaches_the_audio(server, said, body, keywords):
    check(served(server, body), said, keywords)


def test_the_server_defaults_are_the_librarys(server, said):
    assert np.array_equal(served(server, {}), said())


def test_a_streamed_request_takes_its_fields_too(server, tts):
    # against the library's stream (the stream decoder's float sums are not the whole
    # decode's, so a stream is compared with a stream)
    def streamed(**keywords):
        return pcm16(np.concatenate(list(tts.stream(TEXT, **keywords))))

    body = {"input": TEXT, "seed": 11, "temperature": 0.9, "voice": "echo"}
    body |= {"response_format": "pcm", "stream": True}
    with server.stream("POST", "/v1/audio/speech", json=body) as r:
        got = b"".join(r.iter_bytes())
    assert got == streamed(seed=11, temperature=0.9, voice="en_man")
    assert got != streamed(seed=11)


# higgs batch ---------------------------------------------------------------------------


def tone_file(path, seconds=1.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-t), rate)
    return path


def test_every_manifest_field_reaches_the_audio(home, tmp_path, tts, said):
    # (a fresh voice store: its pin of a built-in voice is made again, the same codes)
    ref = tone_file(tmp_path / "ref.wav")
    rows = [{"id": i, "text": TEXT, "seed": SEED, **fields} for i, _, fields, _, _ in FIELDS]
    rows.append({"id": "default", "text": TEXT, "seed": SEED})
    rows.append({"id": "ref", "text": TEXT, "seed": SEED, "ref_audio": str(ref),
                 "ref_text": "A falling tone."})  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["batch", str(tmp_path / "rows.jsonl"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    wanted = {i: k for i, _, _, _, k in FIELDS}
    wanted["ref"] = {"refs": [(str(ref), "A falling tone.")]}
    for row, keywords in wanted.items():
        got, rate = sf.read(out / f"{row}.wav", dtype="int16")
        assert rate == tts.sample_rate
        check(got, said, keywords)
    assert np.array_equal(sf.read(out / "default.wav", dtype="int16")[0], said())


# higgs say -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, keywords",
    [pytest.param(f, k, id=i) for i, _, _, f, k in FIELDS]
    + [pytest.param(f, k, id=i) for i, f, k in SAY_ONLY],
)
def test_every_say_flag_reaches_the_audio(home, tmp_path, tts, said, flags, keywords):
    out = tmp_path / "out.wav"
    r = CliRunner().invoke(cli, ["say", TEXT, "-o", str(out), "--seed", str(SEED), *flags])
    assert r.exit_code == 0, r.output
    got, rate = sf.read(io.BytesIO(out.read_bytes()), dtype="int16")
    assert rate == tts.sample_rate
    check(got, said, keywords)
