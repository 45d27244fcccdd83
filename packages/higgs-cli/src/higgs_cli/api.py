"""OpenAI's speech API, in its own terms: what a request may hold (``Limits``), how
its body is read and checked (``parse_speech``), and how a failure reaches the client
(``ApiError``, in OpenAI's error shape; a client's mistake is a 4xx, never a 5xx)."""

import asyncio
import math
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse

from higgs_cli.output import FORMATS, STREAMABLE
from higgs_cli.settings import HiggsError, NoAudio, Settings
from higgs_cli.settings import Request as SpeakRequest
from higgs_cli.voices import (
    DamagedVoice,
    InvalidVoiceName,
    UnknownVoice,
    VoiceError,
    VoiceExists,
)

# OpenAI's voice names, mapped to built-in voices so unchanged clients work.
OPENAI_VOICES = {
    **dict.fromkeys(["alloy", "nova", "shimmer", "coral", "sage"], "en_woman"),
    **dict.fromkeys(["echo", "fable", "ash", "ballad", "verse"], "en_man"),
    "onyx": "en_man_deep",
}


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


class StalledClient(Exception):
    """A streaming client read nothing for too long."""


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
