"""`higgs serve`: the OpenAI-compatible speech server."""

import os
import sys
from pathlib import Path

import click

from higgs_cli.commands.common import (
    fail,
    friendly,
    max_ref_seconds_option,
    model_options,
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@model_options
@click.option(
    "--max-input-chars",
    type=click.IntRange(1, 1_000_000),
    default=4096,
    show_default=True,
    help="Longest 'input' text a request may send.",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(0, 1024, min_open=True),
    default=25.0,
    show_default=True,
    help="Largest request body (voice uploads included).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1, 10_000),
    help="Generation requests waiting or running before 429. [default: 2 x --max-batch]",
)
@click.option(
    "--max-streams",
    type=click.IntRange(1, 10_000),
    help="Streamed responses open at once. [default: --max-queue]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, 86_400, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds of generation allowed per request.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Requests decoded together, one frame each per model step (1: one at a time).",
)
@max_ref_seconds_option
@click.option(
    "--stream-timeout",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a streamed response may wait on a client that reads nothing.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds a stop (SIGTERM, Ctrl-C) waits for requests in flight.",
)
@click.option(
    "--prefix-cache-mb",
    type=click.FloatRange(0),
    default=512.0,
    show_default=True,
    help="Memory for voice prefixes (the KV state of a voice's constant prompt turns).",
)
@click.option(
    "--warmup/--no-warmup",
    default=True,
    show_default=True,
    help="Speak one word before serving, so the first request is not slow.",
)
@friendly
def serve(
    host,
    port,
    model,
    codec,
    max_input_chars,
    max_body_mb,
    max_queue,
    max_streams,
    timeout,
    max_batch,
    max_ref_seconds,
    stream_timeout,
    shutdown_timeout,
    prefix_cache_mb,
    warmup,
):
    """Serve OpenAI's speech API (POST /v1/audio/speech) and voice management."""
    import contextlib
    import logging
    import signal
    import socket

    import uvicorn

    from higgs_cli.pipeline import Higgs
    from higgs_cli.serve import Limits, capacity, create_app, device_memory

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:  # before the model loads: a port in use is one line, not a traceback
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as e:
            fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tts = Higgs.from_pretrained(model, codec, prefix_cache_mb=prefix_cache_mb)
    tts.max_ref_seconds = max_ref_seconds
    if warmup:
        tts.say("Hello.", max_seconds=0.5, warn=lambda _: None)
    limits = Limits(
        max_input_chars=max_input_chars,
        max_body_bytes=int(max_body_mb * 2**20),
        max_queue=max_queue or 0,  # 0: derived from the batch
        max_streams=max_streams or 0,
        request_timeout=timeout,
        max_batch=max_batch,
        write_timeout=stream_timeout,
    )
    app = create_app(tts, model_id=Path(str(model)).name, limits=limits)
    for line in capacity(tts, max_batch, device_memory()):
        click.echo(f"higgs: {line}", err=True)
    click.echo(f"higgs: serving {model} on http://{host}:{port}", err=True)
    # No ASGI lifespan: a forced stop would cancel it mid-way (an asyncio traceback);
    # the worker is closed here instead, once the server has stopped.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=shutdown_timeout,
        lifespan="off",
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                click.echo(
                    f"higgs: stopping: requests in flight get up to {shutdown_timeout:g} s "
                    "(again to stop now)",
                    err=True,
                )
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the stop signal once it is done, into a running event
            # loop, which then prints an asyncio traceback; here a stop just ends run().
            stops = (signal.SIGINT, signal.SIGTERM)
            previous = {s: signal.signal(s, self.handle_exit) for s in stops}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    code = 0
    try:
        Server(config).run()
    except SystemExit as e:  # uvicorn's own start-up failure (it has said why)
        code = e.code if isinstance(e.code, int) else 1
    finally:
        # A second stop while the worker winds down: stop now.
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, lambda *_: os._exit(130))
        app.state.worker.close()  # joins the thread that owns MLX's stream
        click.echo("higgs: stopped", err=True)
        # Everything is stopped and written. Skip the interpreter's and the C++
        # runtime's teardown: MLX's stream threads, one of them made on the worker
        # thread, abort the process when static destructors run ("terminate called
        # without an active exception", every time here once a stream has served).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
