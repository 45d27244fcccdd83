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
import tempfile
import time
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from higgs_cli.api import (
    ApiError,
    Cancelled,
    Limits,
    StalledClient,
    as_api_error,
    busy,
    parse_speech,
    read_body,
    status_of,
    voice_error,
)
from higgs_cli.output import MEDIA_TYPES, encode, pcm16, wav_header
from higgs_cli.pipeline import add_voice, check_ref_audio
from higgs_cli.settings import HiggsError
from higgs_cli.voices import (
    VoiceError,
    check_name,
)
from higgs_cli.worker import DONE, Job, Worker, capacity, device_memory

__all__ = [
    "Job",
    "Limits",
    "PacedStream",
    "StalledClient",
    "capacity",
    "create_app",
    "device_memory",
    "parse_speech",
]

log = logging.getLogger("higgs.serve")


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
            while item is not DONE:
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


async def wait_or_cancel(request: Request, job: Job, done_ok: bool = False):
    """The job's next item (its one result); cancels the job if the client disconnects
    first. ``done_ok``: the end of the job may come instead (it is returned)."""
    result = asyncio.ensure_future(job.next())
    while True:
        done, _ = await asyncio.wait({result}, timeout=0.25)
        if done:
            value = result.result()
            if value is DONE and not done_ok:
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
