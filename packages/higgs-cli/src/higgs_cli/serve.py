"""`higgs serve`: OpenAI's speech API over the pipeline, for many clients and one model.

Generation runs on one worker thread that owns the model: up to ``max_batch``
requests are decoded together, joining and leaving the batch at frame boundaries
(``max_batch`` 1: one at a time, in arrival order); a bounded queue turns excess
requests away with 429. Streamed responses send audio while frames are still
being generated, and a client that goes away cancels only its own row.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from higgs_cli.output import FORMATS, MEDIA_TYPES, STREAMABLE, encode, pcm16, wav_header
from higgs_cli.pipeline import JOIN_CHUNK, add_voice, check_ref_audio
from higgs_cli.settings import HiggsError, NoAudio, Settings
from higgs_cli.settings import Request as SpeakRequest
from higgs_cli.voices import (
    DamagedVoice,
    InvalidVoiceName,
    UnknownVoice,
    VoiceError,
    VoiceExists,
    check_name,
)

log = logging.getLogger("higgs.serve")

# OpenAI's voice names, mapped to built-in voices so unchanged clients work.
OPENAI_VOICES = {
    **dict.fromkeys(["alloy", "nova", "shimmer", "coral", "sage"], "en_woman"),
    **dict.fromkeys(["echo", "fable", "ash", "ballad", "verse"], "en_man"),
    "onyx": "en_man_deep",
}


# How much each finished request moves the mean time a request takes.
SMOOTHING = 0.2
# Requests queued per row of the batch by default: a full batch running and as many
# waiting to take the rows they free.
QUEUE_PER_ROW = 2


@dataclass
class Limits:
    """What the server takes at once. The queue and stream limits follow the batch by
    default, so that a full batch of streaming clients is served, not turned away."""

    max_input_chars: int = 4096
    max_body_bytes: int = 25 * 2**20  # also bounds voice uploads
    max_queue: int = 0  # generation requests waiting or running (0: QUEUE_PER_ROW a row)
    max_streams: int = 0  # streamed responses open at once (0: as many as max_queue)
    request_timeout: float = 300.0  # seconds of generation per request
    max_batch: int = 8  # requests decoded together
    write_timeout: float = 30.0  # seconds a stream may wait on a client that reads nothing

    def __post_init__(self):
        self.max_queue = self.max_queue or QUEUE_PER_ROW * self.max_batch
        self.max_streams = self.max_streams or self.max_queue


def device_memory() -> int | None:
    """Bytes of memory the model's device has: the GPU's (Metal, CUDA), else the
    machine's (the CPU backend); None where neither is known."""
    import mlx.core as mx

    size = mx.device_info().get("memory_size")
    if isinstance(size, int) and size > 0:
        return size
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def capacity(tts, max_batch: int, memory: int | None) -> list[str]:
    """What ``max_batch`` rows may hold in KV cache at most, as start-up lines: one
    that says it, and a warning where that and the weights outgrow ``memory``."""
    from higgs_core.loading import named_arrays

    per_position = tts.model.kv_bytes_per_position
    positions = tts.max_row_positions(Settings())
    kv = max_batch * positions * per_position
    lines = [
        f"KV cache: {per_position / 1024:,.1f} KB a position per request; "
        f"{max_batch} at once of the longest (~{positions:,} positions each) "
        f"take up to {kv / 1e9:.2f} GB"
    ]
    weights = sum(v.nbytes for _, v in named_arrays(tts.model))
    if memory and weights + kv > memory:
        lines.append(
            f"warning: the model ({weights / 1e9:.1f} GB) and that KV cache outgrow this "
            f"device's {memory / 1e9:.1f} GB: long requests at a full batch may run out of "
            "memory; lower --max-batch"
        )
    return lines


class StalledClient(Exception):
    """A streaming client read nothing for too long."""


class PacedStream(StreamingResponse):
    """A StreamingResponse whose every write must go through within ``write_timeout``:
    a client that stops reading would otherwise hold its stream (and its row of the
    batch) for as long as it stays connected."""

    def __init__(self, content, *, write_timeout: float, **kwargs):
        super().__init__(content, **kwargs)
        self.write_timeout = write_timeout

    async def stream_response(self, send):
        async def timed(message):
            try:
                await asyncio.wait_for(send(message), self.write_timeout)
            except TimeoutError:
                raise StalledClient(
                    f"the client read nothing for {self.write_timeout:g} s"
                ) from None

        await timed(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            await timed({"type": "http.response.body", "body": chunk, "more_body": True})
        await timed({"type": "http.response.body", "body": b"", "more_body": False})


class ApiError(Exception):
    def __init__(self, status, message, type="invalid_request_error", code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def busy(message: str, code: str, retry_after: int) -> ApiError:
    """429: come back in ``retry_after`` seconds."""
    headers = {"Retry-After": str(retry_after)}
    return ApiError(429, message, type="rate_limit_error", code=code, headers=headers)


class Cancelled(Exception):
    """The client went away."""


class ShuttingDown(Exception):
    """The server stopped before the request could finish."""


_DONE = object()


class Job:
    """One request's model work. ``make(batch)`` gives the work (a generator for
    :class:`higgs_cli.runner.Runner`, see ``Higgs.job``), which may ``emit``
    items; its result is emitted too, then ``_DONE``."""

    def __init__(self, make, timeout: float):
        self.make = make
        self.loop = asyncio.get_running_loop()
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.timeout = timeout
        self.started: float | None = None

    def emit(self, item):
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop is gone, and with it whoever was waiting
            self.cancel.set()

    def overdue(self, now: float) -> BaseException | None:
        """Why the job must stop at ``now`` (the worker's clock), if it must."""
        if self.cancel.is_set():
            return Cancelled("the client disconnected")
        if self.started is not None and now - self.started > self.timeout:
            return TimeoutError(f"generation took longer than {self.timeout:g} s")
        return None

    async def next(self):
        item = await self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item


class Worker:
    """The model's thread: every request's work as a job on one batch, so up to
    ``max_batch`` requests are decoded together, one frame each per model step
    (continuous batching: they join and leave at frame boundaries). With
    ``max_batch`` 1 they take turns in arrival order."""

    def __init__(self, tts, max_queue: int, max_batch: int = 8, clock=time.monotonic):
        self.tts = tts
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.pending = 0  # accepted and not yet finished: waiting or running
        self.running = 0  # rows decoding in the batch now (at most max_batch)
        self.clock = clock
        self.mean_seconds: float | None = None  # a request's time in the worker, smoothed
        self._running: dict[Job, object] = {}  # the jobs in the worker, and their work
        self._lock = threading.RLock()  # pending and the jobs running, across threads
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="higgs-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job):
        with self._lock:
            if self.pending >= self.max_queue:
                raise busy(
                    f"the server is busy ({self.pending} requests queued); retry shortly",
                    "queue_full",
                    self.retry_after(),
                )
            self.pending += 1
        self._jobs.put(job)

    def retry_after(self) -> int:
        """Whole seconds until a request is likely to finish and free a place: with
        ``running`` rows taking ``mean_seconds`` each, one ends every
        ``mean_seconds / running`` on average. Before any has finished, the oldest
        running request's age is the best lower bound there is."""
        mean = self.mean_seconds
        if mean is None:
            now = self.clock()
            with self._lock:
                mean = max((now - (j.started or now) for j in self._running), default=1.0)
        return max(1, math.ceil(mean / max(1, self.running)))

    def _run(self):
        import mlx.core as mx

        from higgs_cli.runner import Runner

        # MLX streams belong to the thread that made them: this thread needs its own.
        mx.set_default_stream(mx.new_stream(mx.default_device()))
        # Newcomers' prompts go in a short chunk a step, so that streams already
        # playing stall less (in 16-bit weights a stream may then round apart from
        # its lone run: see higgs_core.Batch).
        runner = Runner(self.tts.new_batch(self.max_batch, join_chunk=JOIN_CHUNK))
        running = self._running
        while True:
            try:  # wait for work only when there is none
                job = self._jobs.get(block=not running)
                while True:
                    if job is None:  # closing: whoever still waits hears why
                        stop = ShuttingDown("the server is shutting down")
                        for waiting, work in running.items():
                            work.cancel(stop)
                            waiting.emit(stop)
                        while (left := self._next_queued()) is not None:
                            left.emit(stop)
                        return
                    job.started = self.clock()
                    with self._lock:
                        running[job] = runner.add(job.make(runner.batch))
                    job = self._jobs.get_nowait()
            except queue.Empty:
                pass
            now = self.clock()
            for job, work in running.items():
                if (why := job.overdue(now)) is not None:
                    work.cancel(why)
            runner.tick()
            self.running = runner.batch.running  # the rest wait for a row, or between chunks
            for job, work in list(running.items()):
                if work.done:
                    # Counted out before the client hears it is done: a client that reads
                    # /health right after its answer must not see itself still queued.
                    took = self.clock() - (job.started or 0.0)
                    mean = self.mean_seconds
                    self.mean_seconds = took if mean is None else mean + SMOOTHING * (took - mean)
                    with self._lock:
                        del running[job]
                        self.pending -= 1
                    if work.error is not None:
                        job.emit(work.error)
                    else:
                        if work.result is not None:
                            job.emit(work.result)
                        job.emit(_DONE)
                    mx.clear_cache()  # keep memory flat: what the request used goes back

    def _next_queued(self) -> Job | None:
        try:
            return self._jobs.get_nowait()
        except queue.Empty:
            return None

    def close(self, timeout: float = 10.0):
        """Stop taking work, end the jobs in flight and wait for the thread, which
        owns MLX's stream: exiting while it runs can abort the process. Idempotent."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)


# request parsing -------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="body_too_large")
    return bytes(body)


def field(body: dict, name: str, kind, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ApiError(400, f"'{name}' must be of type {kind.__name__}", code="invalid_type")
    if kind is float and not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number", code="invalid_value")
    return value


@dataclass
class SpeechRequest:
    request: SpeakRequest
    voice: str | None
    fmt: str
    stream: bool

    @property
    def text(self) -> str:
        return self.request.text


def parse_speech(body: dict, app) -> SpeechRequest:
    limits: Limits = app.state.limits
    if "input" not in body or body["input"] is None:
        raise ApiError(400, "'input' is missing: give the text to speak", code="missing_input")
    text = field(body, "input", str, "").strip()
    if not text:
        raise ApiError(400, "'input' is empty: give the text to speak", code="empty_input")
    if len(text) > limits.max_input_chars:
        raise ApiError(
            400,
            f"'input' has {len(text)} characters; the limit is {limits.max_input_chars}",
            code="input_too_long",
        )
    voice = body.get("voice")
    if isinstance(voice, dict):
        voice = voice.get("id")
    if voice is not None and not isinstance(voice, str):
        raise ApiError(400, "'voice' must be a voice name", code="invalid_type")
    if voice:
        voice = OPENAI_VOICES.get(voice, voice)
        try:
            app.state.tts.voices.get(voice)
        except VoiceError as e:
            error = voice_error(e)
            error.status = 400  # in a speech request, the voice is a bad field
            raise error from e
    fmt = field(body, "response_format", str, "mp3")
    if fmt not in FORMATS:
        raise ApiError(
            400,
            f"response_format {fmt!r} is not supported; use one of {', '.join(FORMATS)}",
            code="unsupported_format",
        )
    speed = field(body, "speed", float, 1.0)
    if speed != 1.0:
        raise ApiError(400, "'speed' other than 1.0 is not supported", code="unsupported_speed")
    if field(body, "stream_format", str, "audio") != "audio":
        raise ApiError(400, "only stream_format 'audio' is supported", code="unsupported_stream")
    stream = field(body, "stream", bool, False)
    if stream and fmt not in STREAMABLE:
        raise ApiError(
            400,
            f"{fmt} cannot be streamed; use response_format wav or pcm",
            code="unsupported_stream",
        )
    scene = field(body, "scene", str)
    if scene is None:  # OpenAI's name for it
        scene = field(body, "instructions", str)
    # "" asks for no scene, as `higgs say --scene ''` and a manifest's empty scene do
    settings = {"scene": scene.strip() or None} if scene is not None else {}
    for name, kind in (("seed", int), ("temperature", float), ("top_k", int), ("top_p", float)):
        value = field(body, name, kind)
        if value is not None:
            settings[name] = value
    try:
        request = SpeakRequest(text, (voice,) if voice else (), (), Settings().but(**settings))
        request.check()
    except (ValueError, HiggsError, VoiceError) as e:
        raise ApiError(400, str(e), code="invalid_value") from e
    return SpeechRequest(request, voice, fmt, stream)


# handlers -------------------------------------------------------------------------


async def speech(request: Request):
    app = request.app
    rid = f"req-{next(app.state.ids)}"
    t0 = time.perf_counter()
    raw = await read_body(request, app.state.limits.max_body_bytes)
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply", code="invalid_json") from None
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    req = parse_speech(body, app)
    tts = app.state.tts

    def record(status, speech=None, seconds=None):
        if seconds is None:
            seconds = speech.duration if speech else 0.0
        rtf = (time.perf_counter() - t0) / seconds if seconds else 0.0
        log.info(
            "%s voice=%s chars=%d audio=%.2fs rtf=%.2f status=%s",
            rid,
            req.voice or "-",
            len(req.text),
            seconds,
            rtf,
            status,
        )

    if not req.stream:
        job = Job(lambda batch: tts.job(req.request, batch), app.state.limits.request_timeout)
        app.state.worker.submit(job)
        try:
            speech_ = await wait_or_cancel(request, job)
        except BaseException as e:
            record(status_of(e))
            raise
        data = encode(speech_.samples, speech_.sample_rate, req.fmt)
        record(200, speech_)
        return Response(data, media_type=MEDIA_TYPES[req.fmt])

    if app.state.streams >= app.state.limits.max_streams:
        raise busy(
            f"{app.state.streams} streams are open; the limit is {app.state.limits.max_streams}",
            "too_many_streams",
            app.state.worker.retry_after(),
        )

    def make(batch):
        yield from tts.job(req.request, batch, emit=job.emit)

    job = Job(make, app.state.limits.request_timeout)
    app.state.worker.submit(job)
    app.state.streams += 1
    # Nothing is sent until the first audio exists: a request that fails before it (no
    # audio at all, a voice that cannot be made) gets its error status, as a whole one does.
    try:
        first = await wait_or_cancel(request, job, done_ok=True)
    except BaseException as e:
        app.state.streams -= 1
        job.cancel.set()
        record(status_of(e))
        raise
    bytes_per_second = 2 * tts.sample_rate

    async def body_iter():
        status, sent = 200, 0
        try:
            if req.fmt == "wav":
                yield wav_header(tts.sample_rate)
            item = first
            while item is not _DONE:
                data = pcm16(np.asarray(item))
                yield data
                sent += len(data)
                item = await job.next()
        except BaseException as e:
            status = status_of(e)
            if status == 500:
                log.warning("%s stream failed: %s", rid, e)
            raise
        finally:
            job.cancel.set()
            app.state.streams -= 1
            record(status, seconds=sent / bytes_per_second)  # what reached the client

    return PacedStream(
        body_iter(),
        media_type=MEDIA_TYPES[req.fmt],
        write_timeout=app.state.limits.write_timeout,
    )


def as_api_error(error: BaseException) -> ApiError:
    """How a failure reaches the client (499: the client went away)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Cancelled | asyncio.CancelledError | GeneratorExit):
        return ApiError(499, "the client disconnected", code="client_closed")
    if isinstance(error, ShuttingDown):
        return ApiError(503, str(error), type="server_error", code="shutting_down")
    if isinstance(error, StalledClient):
        return ApiError(408, str(error), code="client_stalled")
    if isinstance(error, TimeoutError):
        return ApiError(504, str(error), type="timeout_error", code="timeout")
    if isinstance(error, NoAudio):
        return ApiError(422, str(error), code="no_audio")
    if isinstance(error, VoiceError):
        return voice_error(error)
    if isinstance(error, HiggsError):
        return ApiError(400, str(error))
    return ApiError(500, f"internal error: {error}", type="server_error")


def voice_error(error: VoiceError) -> ApiError:
    """A voice store error in HTTP's terms (and the API's words, not the CLI's)."""
    if isinstance(error, UnknownVoice):
        return ApiError(404, str(error), code="unknown_voice")
    if isinstance(error, VoiceExists):
        return ApiError(409, f"{error}; send force=true to replace it", code="voice_exists")
    if isinstance(error, DamagedVoice):
        hint = f"; DELETE /v1/audio/voices/{error.name} removes it"
        return ApiError(409, f"{error}{hint}", code="damaged_voice")
    if isinstance(error, InvalidVoiceName):
        return ApiError(400, str(error), code="invalid_name")
    return ApiError(400, str(error), code="voice_rejected")


def status_of(error: BaseException) -> int:
    return as_api_error(error).status


async def wait_or_cancel(request: Request, job: Job, done_ok: bool = False):
    """The job's next item (its one result); cancels the job if the client disconnects
    first. ``done_ok``: the end of the job may come instead (it is returned)."""
    result = asyncio.ensure_future(job.next())
    while True:
        done, _ = await asyncio.wait({result}, timeout=0.25)
        if done:
            value = result.result()
            if value is _DONE and not done_ok:
                raise RuntimeError("the job produced no result")
            return value
        if await request.is_disconnected():
            job.cancel.set()
            result.cancel()
            raise Cancelled("the client disconnected")


async def list_voices(request: Request):
    voices = []
    for v in request.app.state.tts.voices.list():
        entry = {"name": v.name, "kind": v.kind}
        for key in ("transcript", "description", "problem"):
            if getattr(v, key):
                entry[key] = getattr(v, key)
        voices.append(entry)
    return JSONResponse({"voices": voices})


async def create_voice(request: Request):
    app = request.app
    limit = app.state.limits.max_body_bytes
    # The body is counted as it arrives (chunked uploads have no Content-Length) and
    # only then parsed: the form parser never sees more than the limit.
    body = await read_body(request, limit)

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=1, max_fields=8, max_part_size=limit
        )
    except ApiError:
        raise
    except Exception as e:
        raise ApiError(400, f"expected a multipart form: {e}", code="invalid_form") from e
    name, text, upload = form.get("name"), form.get("text"), form.get("file")
    if not isinstance(name, str) or not isinstance(text, str) or not isinstance(upload, UploadFile):
        raise ApiError(
            400, "send form fields 'name', 'text' and a 'file' upload", code="invalid_form"
        )
    try:
        check_name(name)
    except VoiceError as e:
        raise voice_error(e) from e
    data = await upload.read()
    if len(data) > limit:
        raise ApiError(413, f"upload over {limit} bytes", code="body_too_large")
    force = form.get("force") in ("1", "true", "True")
    tts = app.state.tts
    with tempfile.TemporaryDirectory() as tmp:
        suffix = Path(upload.filename or "audio.wav").suffix.lower()
        if not suffix or len(suffix) > 6 or not suffix[1:].isalnum():
            suffix = ".wav"
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)

        try:  # the recording's length, from its header, before any work is queued
            check_ref_audio(path, tts.max_ref_seconds)
        except HiggsError as e:
            raise ApiError(
                400, str(e).replace(str(path), "the upload"), code="invalid_audio"
            ) from e

        def make(_batch):  # a job that never waits on the batch
            yield from ()
            return add_voice(
                tts.voices,
                tts.encoder(),
                name,
                path,
                text,
                force=force,
                max_seconds=tts.max_ref_seconds,
            )

        job = Job(make, app.state.limits.request_timeout)
        app.state.worker.submit(job)
        try:
            voice = await wait_or_cancel(request, job)
        except VoiceError as e:
            raise voice_error(e) from e
        except (ValueError, OSError, RuntimeError) as e:
            raise ApiError(400, f"cannot use the upload: {e}", code="invalid_audio") from e
    log.info("voice added: %s", voice.name)
    return JSONResponse({"name": voice.name, "kind": voice.kind}, status_code=201)


async def delete_voice(request: Request):
    name = request.path_params["name"]
    try:
        result = request.app.state.tts.voices.remove(name)
    except VoiceError as e:
        raise voice_error(e) from e
    # A built-in voice stays listed: only its pin goes (it is made again on next use).
    return JSONResponse({"name": name, "result": result, "deleted": result == "removed"})


async def models(request: Request):
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": request.app.state.model_id, "object": "model", "owned_by": "higgs"}],
        }
    )


async def health(request: Request):
    """Liveness, and what an operator watches: requests accepted and not finished
    (``queued``, those decoding included), rows decoding now, and the voice-prefix
    cache (its hit rate is the share of voice prompts not computed again)."""
    worker = request.app.state.worker
    return JSONResponse(
        {
            "status": "ok",
            "queued": worker.pending,
            "running": worker.running,
            "max_batch": worker.max_batch,
            "prefix_cache": request.app.state.tts.prefixes.stats(),
        }
    )


def handled(endpoint):
    """Turn every failure of ``endpoint`` into an error in OpenAI's JSON shape."""

    async def wrapper(request: Request):
        try:
            return await endpoint(request)
        except Exception as e:
            error = as_api_error(e)
            if error.status == 499:
                return Response(status_code=499)  # nobody is listening any more
            if error.status == 500:
                log.exception("internal error")
            return error.response()

    return wrapper


def create_app(tts, *, model_id: str = "higgs-audio-v2", limits: Limits | None = None):
    """The ASGI app serving ``tts`` (a :class:`higgs_cli.pipeline.Higgs`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        app.state.worker.close()

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        what = "no such endpoint" if status == 404 else f"{request.method} is not allowed here"
        code = "not_found" if status == 404 else "method_not_allowed"
        return ApiError(
            status, f"{what}: {request.method} {request.url.path}", code=code
        ).response()

    app = Starlette(
        exception_handlers={404: not_found, 405: not_found},
        routes=[
            Route("/v1/audio/speech", handled(speech), methods=["POST"]),
            Route("/v1/audio/voices", handled(list_voices), methods=["GET"]),
            Route("/v1/audio/voices", handled(create_voice), methods=["POST"]),
            Route("/v1/audio/voices/{name}", handled(delete_voice), methods=["DELETE"]),
            Route("/v1/models", handled(models), methods=["GET"]),
            Route("/health", handled(health), methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.tts = tts
    app.state.model_id = model_id
    app.state.limits = limits or Limits()
    app.state.worker = Worker(tts, app.state.limits.max_queue, app.state.limits.max_batch)
    app.state.streams = 0
    app.state.ids = itertools.count(1)
    return app
