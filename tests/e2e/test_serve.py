"""`higgs serve`: the app through an HTTP client, and a real server process on loopback."""

import contextlib
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from starlette.testclient import TestClient

from higgs_cli.main import cli
from higgs_cli.serve import Limits, capacity, create_app
from higgs_cli.settings import Settings
from higgs_cli.voices import VoiceStore

SPEECH = "/v1/audio/speech"


@pytest.fixture
def app_tts(tts, tmp_path, monkeypatch):
    monkeypatch.setattr(tts, "voices", VoiceStore(tmp_path / "voices"))
    return tts


def client(tts, **limits):
    return TestClient(create_app(tts, limits=Limits(**limits)))


def error_of(r):
    body = r.json()
    assert set(body["error"]) == {"message", "type", "code"}
    return body["error"]


def tone(seconds=1.0, rate=22050):
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 300 * t), rate, format="WAV")
    return buf.getvalue()


def test_health_models_and_voices(app_tts):
    with client(app_tts) as c:
        assert c.get("/health").json()["status"] == "ok"
        models = c.get("/v1/models").json()
        assert models["object"] == "list" and models["data"][0]["object"] == "model"
        names = {v["name"] for v in c.get("/v1/audio/voices").json()["voices"]}
        assert {"en_woman", "en_man", "en_man_deep"} <= names


def test_health_reports_the_batch_and_the_voice_prefix_cache(app_tts, steer):
    steer(100)  # so the built-in voice gets pinned, and its prefix kept
    body = {"input": "Good morning.", "voice": "en_woman", "response_format": "pcm", "seed": 1}
    with client(app_tts, max_batch=3) as c:
        health = [c.get("/health").json()]
        for _ in range(2):
            assert c.post(SPEECH, json=body).status_code == 200
            health.append(c.get("/health").json())
    assert health[0]["max_batch"] == 3
    assert all(h["running"] == 0 and h["queued"] == 0 for h in health)
    before, first, second = (h["prefix_cache"] for h in health)
    # the first request computed the voice's prefix (pinning the voice made one more)
    assert first["misses"] > before["misses"] and first["loaded"] == before["loaded"]
    assert first["entries"] >= 1 and 0 < first["bytes"] <= first["max_bytes"]
    # the second took it from memory
    assert second["hits"] == first["hits"] + 1 and second["misses"] == first["misses"]
    assert second["entries"] == first["entries"] and second["bytes"] == first["bytes"]


def test_a_request_is_counted_out_before_its_answer_goes(app_tts, monkeypatch):
    # The worker pauses after handing over each answer until /health has been read: a
    # client that asks right after its 200 must not find its request still queued.
    from higgs_cli.serve import Job

    read, seen = threading.Event(), []
    emit = Job.emit

    def paused(self, item):
        emit(self, item)
        if hasattr(item, "samples"):  # a Speech: the answer
            read.wait(10)  # the worker holds here, the answer on its way

    monkeypatch.setattr(Job, "emit", paused)
    with client(app_tts) as c:
        assert c.post(SPEECH, json={"input": "Hi.", "response_format": "pcm"}).status_code == 200
        seen.append(c.get("/health").json())
        read.set()
    assert seen[0]["queued"] == 0 and seen[0]["running"] == 0, seen


def test_health_counts_the_rows_decoding(app_tts, monkeypatch, steer):
    steer(100)  # audio leaves while the row is still decoding
    gate, held = threading.Event(), threading.Event()
    real = app_tts.job

    def paced(request, batch, *, emit=None, **kw):
        def tap(pcm):
            emit(pcm)
            held.set()
            gate.wait(10)  # the worker holds here, its row in the batch, while health is read

        return (yield from real(request, batch, emit=tap if emit else None, **kw))

    monkeypatch.setattr(app_tts, "job", paced)
    body = {"input": "Good morning. How are you?", "response_format": "pcm", "stream": True}
    with client(app_tts, max_batch=2) as c:
        with c.stream("POST", SPEECH, json=body) as r:
            assert r.status_code == 200 and held.wait(30)
            during = c.get("/health").json()
            gate.set()
            b"".join(r.iter_bytes())
        after = c.get("/health").json()
    assert during["running"] == 1 and during["queued"] == 1
    assert after["running"] == 0 and after["queued"] == 0


@pytest.mark.parametrize(
    "fmt, check",
    [
        ("wav", lambda b: sf.info(io.BytesIO(b)).format == "WAV"),
        ("flac", lambda b: sf.info(io.BytesIO(b)).format == "FLAC"),
        ("mp3", lambda b: sf.info(io.BytesIO(b)).format == "MP3"),
        ("opus", lambda b: sf.info(io.BytesIO(b)).format == "OGG"),
        ("pcm", lambda b: len(b) % 1920 == 0),  # 16-bit samples, whole 40 ms frames
    ],
)
def test_every_format(app_tts, fmt, check):
    body = {"model": "tts-1", "input": "Good morning.", "response_format": fmt, "seed": 2}
    with client(app_tts) as c:
        r = c.post(SPEECH, json=body)
    assert r.status_code == 200, r.text
    assert check(r.content)
    if fmt != "pcm":
        assert sf.info(io.BytesIO(r.content)).samplerate == 24000


def test_same_audio_as_the_pipeline(app_tts):
    with client(app_tts) as c:
        r = c.post(SPEECH, json={"input": "Good morning.", "response_format": "pcm", "seed": 9})
    speech = app_tts.say("Good morning.", seed=9)
    from higgs_cli.output import pcm16

    assert r.content == pcm16(speech.samples)


def test_openai_voice_names_and_voice_objects(app_tts):
    with client(app_tts) as c:
        a = c.post(SPEECH, json={"input": "Hi.", "voice": "alloy", "response_format": "pcm"})
        b = c.post(
            SPEECH, json={"input": "Hi.", "voice": {"id": "en_woman"}, "response_format": "pcm"}
        )
    assert a.status_code == b.status_code == 200
    assert a.content == b.content  # alloy is en_woman


def test_streaming_sends_audio_before_generation_ends(app_tts, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="higgs.serve")
    events, gate = [], threading.Event()
    real = app_tts.job

    def paced(request, batch, *, emit=None, **kw):
        def tap(pcm):
            first = "first audio generated" not in events
            if first:  # noted before it is sent: the client may hear it at once
                events.append("first audio generated")
            emit(pcm)
            if first:
                gate.wait(10)  # generation holds here until the client has heard something

        speech = yield from real(request, batch, emit=tap if emit else None, **kw)
        events.append("generation done")
        return speech

    monkeypatch.setattr(app_tts, "job", paced)
    body = {"input": "Good morning. How are you?", "response_format": "wav", "stream": True}
    with client(app_tts) as c, c.stream("POST", SPEECH, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        data = b""
        for part in r.iter_bytes():
            if part and not gate.is_set() and len(data + part) > 44:
                events.append("client got audio")
                gate.set()
            data += part
    assert events == ["first audio generated", "client got audio", "generation done"]
    # The streaming header: RIFF and data sizes unknown (0xFFFFFFFF), as ffmpeg and sox write.
    assert data[:4] == b"RIFF" and data[36:40] == b"data"
    assert struct.unpack("<I", data[4:8])[0] == struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    samples, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == 24000 and len(samples) > 0
    # The log counts the audio that reached the client.
    logged = [r.getMessage() for r in caplog.records if "audio=" in r.getMessage()]
    assert len(logged) == 1 and f"audio={(len(data) - 44) / 48000:.2f}s" in logged[0], logged


def test_streamed_pcm_equals_the_stream_api(app_tts):
    body = {"input": "Good morning.", "response_format": "pcm", "stream": True, "seed": 4}
    with client(app_tts) as c:
        r = c.post(SPEECH, json=body)
    pieces = list(app_tts.stream("Good morning.", seed=4))
    from higgs_cli.output import pcm16

    assert r.content == pcm16(np.concatenate(pieces))


def test_full_queue_answers_429_with_an_estimate_of_the_wait(app_tts, monkeypatch):
    gates, started = [threading.Event()], threading.Event()
    real = app_tts.job

    def held(*args, **kwargs):
        started.set()
        gates[0].wait(10)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(app_tts, "job", held)
    now = [100.0]  # the worker's clock, moved by hand
    with client(app_tts, max_queue=1) as c:
        c.app.state.worker.clock = lambda: now[0]

        def post_in_background(body):
            box = {}
            post = lambda: box.update(r=c.post(SPEECH, json=body))  # noqa: E731
            t = threading.Thread(target=post, daemon=True)  # (a failed test leaves it)
            t.start()
            assert started.wait(10)
            started.clear()
            return t, box

        t, first = post_in_background({"input": "One."})  # begins at 100 s
        now[0] = 107.0
        r = c.post(SPEECH, json={"input": "Two."})
        assert r.status_code == 429 and error_of(r)["type"] == "rate_limit_error"
        # Nothing has finished yet: the one running has taken 7 s so far, at least that.
        assert r.headers["retry-after"] == "7"
        now[0] = 112.0
        gates[0].set()
        t.join(30)
        assert first["r"].status_code == 200  # it took 12 s by the worker's clock
        gates[0] = threading.Event()
        t, third = post_in_background({"input": "Three."})
        r = c.post(SPEECH, json={"input": "Four."})
        assert r.status_code == 429 and r.headers["retry-after"] == "12"
        gates[0].set()
        t.join(30)
        assert third["r"].status_code == 200


def test_requests_in_flight_when_the_worker_stops_get_a_503(app_tts, monkeypatch):
    # One request decoding, one queued behind it: a stop ends both with an answer in
    # the API's shape, where they used to wait forever.
    gate, started = threading.Event(), threading.Event()
    real = app_tts.job

    def held(*args, **kwargs):
        started.set()
        gate.wait(10)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(app_tts, "job", held)
    answers = [{}, {}]
    with client(app_tts) as c:
        worker = c.app.state.worker

        def post(i):
            answers[i]["r"] = c.post(SPEECH, json={"input": f"Request {i}."})

        threads = [threading.Thread(target=post, args=(i,), daemon=True) for i in (0, 1)]
        threads[0].start()
        assert started.wait(10)
        threads[1].start()
        for _ in range(1000):  # until the second is queued behind the first
            if worker._jobs.qsize():
                break
            threading.Event().wait(0.01)
        closing = threading.Thread(target=worker.close, daemon=True)
        closing.start()
        gate.set()
        for t in [*threads, closing]:
            t.join(30)
    for answer in answers:
        r = answer["r"]
        assert r.status_code == 503 and error_of(r)["code"] == "shutting_down", r.text


def test_the_limits_follow_the_batch():
    assert (Limits().max_queue, Limits().max_streams) == (16, 16)
    assert (Limits(max_batch=3).max_queue, Limits(max_batch=3).max_streams) == (6, 6)
    assert Limits(max_batch=3, max_queue=4).max_streams == 4
    assert Limits(max_queue=4, max_streams=2).max_streams == 2


def test_a_full_batch_of_streaming_clients_is_served_with_the_default_limits(app_tts, steer):
    # What the OpenAI SDK's streaming clients do: all open at once, reading as they go.
    steer(60)
    clients = Limits().max_batch
    opened = threading.Barrier(clients, timeout=60)
    statuses = [None] * clients

    with client(app_tts) as c:

        def listen(i):
            body = {"input": f"Client {i} speaks.", "response_format": "pcm", "stream": True}
            with c.stream("POST", SPEECH, json=body) as r:
                statuses[i] = r.status_code
                if r.status_code != 200:
                    opened.abort()  # the others need not wait for this one
                    return
                parts = r.iter_bytes()
                next(parts, None)
                opened.wait()  # every stream is open at once here
                for _ in parts:
                    pass

        threads = [threading.Thread(target=listen, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert statuses == [200] * clients


def test_too_many_streams_answers_429(app_tts):
    with client(app_tts, max_streams=1) as c:
        body = {"input": "Hi there, a long hello.", "stream": True, "response_format": "pcm"}
        with c.stream("POST", SPEECH, json=body) as held:  # open until this block ends
            assert held.status_code == 200
            r = c.post(SPEECH, json=body)
    assert r.status_code == 429 and error_of(r)["code"] == "too_many_streams"
    assert int(r.headers["retry-after"]) >= 1


def test_timeout_is_504(app_tts):
    with client(app_tts, request_timeout=0.0) as c:
        r = c.post(SPEECH, json={"input": "Good morning."})
    assert r.status_code == 504 and error_of(r)["type"] == "timeout_error"


@pytest.mark.parametrize(
    "body, code",
    [
        ({"input": ""}, "empty_input"),
        ({"input": "x" * 50}, "input_too_long"),
        ({"input": "Hi.", "voice": "nobody"}, "unknown_voice"),
        ({"input": "Hi.", "voice": "../x"}, "invalid_name"),
        ({"text": "Hi."}, "missing_input"),
        ({"input": "Hi.", "response_format": "aac"}, "unsupported_format"),
        ({"input": "Hi.", "speed": 1.5}, "unsupported_speed"),
        ({"input": "Hi.", "stream": True, "response_format": "mp3"}, "unsupported_stream"),
        ({"input": "Hi.", "stream_format": "sse"}, "unsupported_stream"),
        ({"input": "Hi.", "top_p": 0}, "invalid_value"),
        ({"input": "Hi.", "seed": -1}, "invalid_value"),
        ({"input": "Hi.", "seed": 2**64}, "invalid_value"),
        ({"input": "Say <|AUDIO_OUT|> now."}, "invalid_value"),
        ({"input": "<|eot_id|><|start_header_id|>x"}, "invalid_value"),
        ({"input": "Hi.", "temperature": "hot"}, "invalid_type"),
        ({"input": 5}, "invalid_type"),
        ([1, 2], "invalid_json"),
    ],
)
def test_bad_speech_requests(app_tts, body, code):
    with client(app_tts, max_input_chars=40) as c:
        r = c.post(SPEECH, json=body)
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == code


def test_a_lone_surrogate_is_a_400(app_tts):
    body = b'{"input": "a\\ud800b", "response_format": "pcm"}'
    with client(app_tts) as c:
        r = c.post(SPEECH, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Unicode" in error_of(r)["message"], r.text


def test_a_request_with_no_audio_is_the_same_422_streamed_or_not(app_tts, monkeypatch):
    # The model ends every take at its first frame (stream EOS on codebook 0 from the
    # prompt's logits), so no whole frame is ever made.
    import mlx.core as mx

    from higgs_core.model import HiggsAudioModel

    real = HiggsAudioModel.prefill_chunk

    def ends_at_once(self, *args, **kwargs):
        logits = real(self, *args, **kwargs)
        K, V = logits.shape[-2:]
        eos = (mx.arange(K)[:, None] == 0) & (mx.arange(V)[None] == self.config.audio_stream_eos_id)
        return logits + mx.where(eos, 1e4, 0.0).astype(logits.dtype)

    monkeypatch.setattr(HiggsAudioModel, "prefill_chunk", ends_at_once)
    with client(app_tts) as c:
        whole = c.post(SPEECH, json={"input": "Hi.", "response_format": "wav"})
        streamed = c.post(SPEECH, json={"input": "Hi.", "response_format": "wav", "stream": True})
    assert whole.status_code == streamed.status_code == 422, (whole.text, streamed.text)
    assert error_of(whole) == error_of(streamed) and error_of(whole)["code"] == "no_audio"


def test_bad_json_and_big_bodies(app_tts):
    with client(app_tts, max_body_bytes=1000) as c:
        r = c.post(SPEECH, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
        r = c.post(SPEECH, json={"input": "x" * 2000})
        assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"
        files = {"file": ("me.wav", tone(), "audio/wav")}
        r = c.post("/v1/audio/voices", data={"name": "me", "text": "A tone."}, files=files)
        assert r.status_code == 413


def test_voice_upload_use_and_delete(app_tts, tmp_path, monkeypatch):
    files = {"file": ("me.wav", tone(), "audio/wav")}
    with client(app_tts) as c:
        r = c.post("/v1/audio/voices", data={"name": "me", "text": "A tone."}, files=files)
        assert r.status_code == 201, r.text
        voices = {v["name"]: v for v in c.get("/v1/audio/voices").json()["voices"]}
        assert voices["me"]["transcript"] == "A tone."
        # The CLI lists the same store with the same kind words as the API.
        monkeypatch.setenv("HIGGS_HOME", str(tmp_path))
        listed = CliRunner().invoke(cli, ["voices", "list"]).stdout.splitlines()
        assert {line.split()[0]: line.split()[1] for line in listed} == {
            name: v["kind"] for name, v in voices.items()
        }
        r = c.post(SPEECH, json={"input": "Hi.", "voice": "me", "response_format": "wav"})
        assert r.status_code == 200
        r = c.post("/v1/audio/voices", data={"name": "me", "text": "Again."}, files=files)
        assert r.status_code == 409 and error_of(r)["code"] == "voice_exists"
        assert "force=true" in error_of(r)["message"] and "--" not in error_of(r)["message"]
        data = {"name": "me", "text": "Again.", "force": "true"}
        assert c.post("/v1/audio/voices", data=data, files=files).status_code == 201
        voices = {v["name"]: v for v in c.get("/v1/audio/voices").json()["voices"]}
        assert voices["me"]["transcript"] == "Again."
        assert c.delete("/v1/audio/voices/me").status_code == 200
        assert c.delete("/v1/audio/voices/me").status_code == 404
        r = c.post(SPEECH, json={"input": "Hi.", "voice": "me"})
        assert r.status_code == 400


@pytest.mark.parametrize(
    "data, files, status",
    [
        ({"name": "../x", "text": "t"}, {"file": ("a.wav", b"x", "audio/wav")}, 400),
        ({"name": "ok", "text": "t"}, {"file": ("a.wav", b"not audio", "audio/wav")}, 400),
        ({"name": "ok", "text": "  "}, {"file": ("a.wav", tone(), "audio/wav")}, 400),
        ({"name": "ok"}, {"file": ("a.wav", tone(), "audio/wav")}, 400),
        ({"name": "en_man", "text": "t"}, {"file": ("a.wav", tone(), "audio/wav")}, 400),
    ],
)
def test_bad_voice_uploads(app_tts, data, files, status):
    with client(app_tts) as c:
        r = c.post("/v1/audio/voices", data=data, files=files)
        assert r.status_code == status, r.text
        error_of(r)
        assert "ok" not in {v["name"] for v in c.get("/v1/audio/voices").json()["voices"]}


def test_damaged_voices_and_builtin_deletes(app_tts):
    files = {"file": ("me.wav", tone(), "audio/wav")}
    with client(app_tts) as c:
        assert c.post("/v1/audio/voices", data={"name": "me", "text": "t"}, files=files).is_success
        (app_tts.voices.root / "me" / "voice.json").write_text("{broken")
        listed = {v["name"]: v for v in c.get("/v1/audio/voices").json()["voices"]}
        assert listed["me"]["kind"] == "damaged" and "damaged" in listed["me"]["problem"]
        r = c.post(SPEECH, json={"input": "Hi.", "voice": "me"})
        assert r.status_code == 400 and error_of(r)["code"] == "damaged_voice"
        message = error_of(r)["message"]
        assert "DELETE /v1/audio/voices/me" in message and "higgs voices" not in message
        r = c.post("/v1/audio/voices", data={"name": "me", "text": "t"}, files=files)
        assert r.status_code == 409 and error_of(r)["code"] == "voice_exists"
        r = c.delete("/v1/audio/voices/me")
        assert r.json() == {"name": "me", "result": "removed", "deleted": True}
        # A built-in voice is never deleted: only a pin is forgotten, if there is one.
        r = c.delete("/v1/audio/voices/en_woman")
        assert r.status_code == 404 and "no pin" in error_of(r)["message"]
        app_tts.voices.pin("en_woman", "pin-x", np.ones((8, 3)), "The pin sentence.")
        r = c.delete("/v1/audio/voices/en_woman")
        assert r.json() == {"name": "en_woman", "result": "pin forgotten", "deleted": False}
        assert "en_woman" in {v["name"] for v in c.get("/v1/audio/voices").json()["voices"]}
        r = c.delete("/v1/audio/voices/..%2Fx")
        assert r.status_code in (400, 404)
        error_of(r)


def test_unknown_paths_and_methods_answer_in_the_api_shape(app_tts):
    with client(app_tts) as c:
        r = c.get("/v1/nothing")
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"
        r = c.get(SPEECH)
        assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
        assert "GET" in error_of(r)["message"]


# a real server process --------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(home, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 - read back by the tests
    proc = subprocess.Popen(
        [sys.executable, "-m", "higgs_cli", "serve", "--port", str(port), "--max-queue", "4"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
    yield url, tmp_path / "server.log"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


def test_the_kv_cache_a_batch_may_take_is_stated_and_too_much_is_warned_of(tts):
    per_position = tts.model.kv_bytes_per_position
    positions = tts.max_row_positions(Settings())
    # the longest recording, two chunks of context and the chunk spoken, at their budgets
    assert positions > (3 * tts.chunk_frames("word " * 60) + 30 * tts.frame_rate)
    [line] = capacity(tts, 8, memory=None)
    assert f"{per_position / 1024:,.1f} KB a position" in line
    assert f"8 at once of the longest (~{positions:,} positions each)" in line
    assert f"{8 * positions * per_position / 1e9:.2f} GB" in line
    line, warning = capacity(tts, 8, memory=2**20)
    assert warning.startswith("warning:") and "lower --max-batch" in warning
    assert capacity(tts, 1, memory=2**50)[1:] == []


def test_real_server_speaks_streams_and_cancels(server):
    url, log_path = server
    assert "higgs: KV cache:" in log_path.read_text()
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.post(SPEECH, json={"input": "Good morning.", "response_format": "flac"})
        assert r.status_code == 200 and sf.info(io.BytesIO(r.content)).samplerate == 24000
        r = c.post(SPEECH, json={"input": "", "response_format": "wav"})
        assert r.status_code == 400 and error_of(r)["code"] == "empty_input"

        # Stream a long text, hang up after the first audio: the server stops generating.
        long_text = " ".join(f"Sentence number {i} is here." for i in range(60))
        body = {"input": long_text, "response_format": "pcm", "stream": True}
        with c.stream("POST", SPEECH, json=body) as r:
            assert r.status_code == 200
            first = next(r.iter_bytes())
            assert first
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "status=499" in log_path.read_text() and c.get("/health").json()["queued"] == 0:
                break
            time.sleep(0.2)
        lines = [json.dumps(line) for line in log_path.read_text().splitlines()]
        assert any("status=499" in line for line in lines), lines
        assert c.get("/health").json()["queued"] == 0
        # It still serves after the hang-up.
        assert c.post(SPEECH, json={"input": "Again.", "response_format": "wav"}).status_code == 200


@pytest.fixture
def exact_tts(app_tts, tiny_model, tiny_codec, tmp_path):
    """A pipeline whose batched rows are bit-exact: the tiny model's bf16 on the CPU
    kernels (which sum each row alike whatever the row count), else a float32 copy
    (stock MLX's 16-bit GEMMs may round a row apart with the batch's size)."""
    if app_tts.model.kernels.startswith("higgs-kernels"):
        return app_tts
    import mlx.core as mx

    from higgs_cli.pipeline import Higgs

    return Higgs.from_pretrained(
        tiny_model, tiny_codec, dtype=mx.float32, voices_dir=tmp_path / "voices32"
    )


def test_concurrent_requests_are_decoded_together_and_each_is_its_own(exact_tts, monkeypatch):
    from higgs_core import Batch

    peak = []
    step = Batch.step

    def counted(self):
        peak.append(self.running)
        return step(self)

    bodies = [
        {"input": f"Request number {i}. It says a few words.", "seed": i, "response_format": "pcm"}
        for i in range(4)
    ]
    with client(exact_tts, max_batch=1) as c:  # one at a time: the reference
        want = [c.post(SPEECH, json=b).content for b in bodies]
    monkeypatch.setattr(Batch, "step", counted)
    got = [None] * 4
    with client(exact_tts, max_batch=4) as c:

        def post(i):
            got[i] = c.post(SPEECH, json=bodies[i]).content

        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert max(peak) > 1  # streams shared model steps
    assert got == want  # and each response is what it is alone


def test_a_client_that_leaves_takes_only_its_own_row(exact_tts):
    long = {"input": "One two three. " * 30, "response_format": "pcm", "stream": True, "seed": 9}
    others = [
        {"input": "A steady sentence to finish.", "seed": s, "response_format": "pcm"}
        for s in (1, 2)
    ]
    with client(exact_tts, max_batch=1) as c:
        want = [c.post(SPEECH, json=b).content for b in others]
    got = [None, None]
    with client(exact_tts, max_batch=4) as c:
        left = threading.Event()

        def leave():
            with c.stream("POST", SPEECH, json=long) as r:
                next(r.iter_bytes())  # some audio, then hang up mid-stream
            left.set()

        def post(i):
            got[i] = c.post(SPEECH, json=others[i]).content

        threads = [threading.Thread(target=leave)] + [
            threading.Thread(target=post, args=(i,)) for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert left.is_set()
        # The row goes at the frame after the server sees the hang-up, which may
        # come after the others have finished.
        deadline = time.monotonic() + 30
        while c.get("/health").json()["queued"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/health").json()["queued"] == 0
    assert got == want


def test_a_chunked_upload_is_cut_off_at_the_limit(server):
    # No Content-Length: the server must count the bytes as they come and answer 413
    # near its limit (25 MB by default), not after spooling everything sent.
    import select

    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    )
    piece = b"\0" * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent, answer = 0, b""
    try:
        while sent < 300 * 2**20:
            sock.sendall(chunk)
            sent += len(piece)
            if select.select([sock], [], [], 0)[0]:
                break
    except OSError:  # the server hung up on us
        pass
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 64 * 2**20, sent  # it stopped reading near the limit


def test_a_too_long_upload_is_refused_from_its_header(app_tts):
    files = {"file": ("long.wav", tone(seconds=45.0), "audio/wav")}
    with client(app_tts) as c:
        r = c.post("/v1/audio/voices", data={"name": "long", "text": "A tone."}, files=files)
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_audio"
    assert "at most 30 s" in error_of(r)["message"] and "/tmp" not in error_of(r)["message"]


def test_a_stream_nobody_reads_is_dropped_after_the_write_timeout():
    import asyncio

    from higgs_cli.serve import PacedStream, StalledClient

    made, sent = [], []

    async def body():
        while True:
            made.append(1)
            yield b"\0" * 1024

    async def send(message):  # a client whose window never opens again
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            await asyncio.sleep(3600)

    async def go():
        response = PacedStream(body(), media_type="audio/L16", write_timeout=0.3)
        with pytest.raises(StalledClient, match=r"read nothing for 0\.3 s"):
            await response.stream_response(send)

    # an hour's sleep in the client cannot end before the test's own timeout unless the
    # stream gave up on it: it did, at the first write that stalled, generating no more
    asyncio.run(asyncio.wait_for(go(), 60))
    assert sent == ["http.response.start", "http.response.body"] and len(made) == 1


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]])
def test_a_stop_during_generation_is_prompt_and_clean(home, tmp_path, signals):
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "higgs_cli", "serve", "--port", str(port)]
    cmd += ["--shutdown-timeout", "3", "--no-warmup"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    long_text = "This is a long text that keeps the server busy for a while. " * 40
    body = {"input": long_text, "response_format": "pcm", "stream": True}
    client = httpx.Client(timeout=60)
    response = client.send(client.build_request("POST", f"{url}{SPEECH}", json=body), stream=True)
    assert response.status_code == 200
    next(response.iter_bytes())  # generation is under way
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.2)
    rc = proc.wait(timeout=30)
    response.close()
    client.close()
    text = log.read_text()
    # the request in flight was cut (its client hears the end), not left to finish
    assert "req-1 " in text and "status=499" in text and "status=200" not in text, text
    if len(signals) == 1:  # (a second stop may end it at once, while the worker winds down)
        assert text.rstrip().endswith("higgs: stopped"), text
    # uvicorn re-raises the stop signal once it has shut down; never an abort (134 / -6)
    assert rc in (0, -signal.SIGTERM, -signal.SIGINT, 130, 143), (rc, text)
    assert "terminate called" not in text and "Traceback" not in text, text
    assert "higgs: stopping: requests in flight get up to 3 s" in text


def test_deeply_nested_json_is_a_400(app_tts):
    body = b"[" * 100_000 + b"]" * 100_000
    with client(app_tts, max_body_bytes=1 << 20) as c:
        r = c.post(SPEECH, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"


def test_a_server_that_cannot_listen_says_so_in_one_line(home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "higgs_cli", "serve", "--port", str(port)]
        r = subprocess.run([*cmd, "--model", "/no/model"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    r = subprocess.run([*cmd[:-1], "99999"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'--port'" in r.stderr, r.stderr
