"""The `higgs` command: a thin layer over :mod:`higgs_cli.pipeline`."""

import functools
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import click

from higgs_cli import __version__
from higgs_cli.output import (
    FORMATS,
    STREAMABLE,
    Player,
    Writer,
    check_writable,
    default_path,
    format_for,
    write_clip,
)
from higgs_cli.pipeline import DEFAULT_CODEC, DEFAULT_MODEL
from higgs_cli.settings import Request, Settings

DEFAULTS = Settings()
SAMPLING = DEFAULTS.sampling
BUILTIN_NOTE = (
    "The built-in voices en_woman, en_man and en_man_deep are this project's own text "
    "descriptions, spoken once and then cloned; they are not the release's recordings "
    "of similar names."
)


class Failure(click.ClickException):
    """A user error: one line on stderr, exit status 1."""

    def show(self, file=None):
        click.echo(f"higgs: error: {self.format_message()}", err=True)


class UsageFailure(Failure):
    """A command line click cannot parse (exit status 2), also on one line."""

    exit_code = 2


def fail(message: str):
    raise Failure(message)


class Commands(click.Group):
    """The ``higgs`` group: click's usage errors (a bad option value, an unknown
    command) come out as one line naming the flag, like every other error."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise UsageFailure(e.format_message()) from e

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            if isinstance(e, Failure):
                raise
            raise UsageFailure(e.format_message()) from e


def friendly(fn):
    """Run a command so that any failure is one line on stderr (a traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, debug=False, **kwargs):
        debug = debug or bool(os.environ.get("HIGGS_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("higgs: interrupted", err=True)
            sys.exit(130)
        except Exception as e:
            if debug:
                traceback.print_exc()
            msg = " ".join(str(e).split()) or type(e).__name__  # one line, all of it
            click.echo(f"higgs: error: {msg}{cli_hint(e)}", err=True)
            sys.exit(1)

    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(wrapper)


def cli_hint(error: Exception) -> str:
    """What to do about a library error, in the command line's words."""
    from higgs_cli.voices import DamagedVoice, VoiceExists
    from higgs_codec import CodecNotFoundError
    from higgs_core import ModelNotFoundError

    if isinstance(error, ModelNotFoundError):
        if error.repo_id is None:
            return " (given by --model or HIGGS_MODEL)"
        # Offline: the codec will be missing too.
        return (
            f" with --model DIR (or HIGGS_MODEL=DIR). higgs needs the codec as well: `hf "
            f"download {DEFAULT_CODEC} --local-dir CODEC_DIR`, then --codec CODEC_DIR "
            "(or HIGGS_CODEC=CODEC_DIR)"
        )
    if isinstance(error, CodecNotFoundError) and error.what == "codec":
        if error.repo_id is None:
            return " (given by --codec or HIGGS_CODEC)"
        return " with --codec DIR (or HIGGS_CODEC=DIR)"
    if isinstance(error, VoiceExists):
        return "; remove it first or pass --force"
    if isinstance(error, DamagedVoice):
        return f"; remove it with `higgs voices remove {error.name}`"
    return ""


def model_options(fn):
    fn = click.option(
        "--codec",
        envvar="HIGGS_CODEC",
        default=DEFAULT_CODEC,
        show_default=True,
        metavar="DIR|REPO",
        help="Audio tokenizer: hub id or local folder (env HIGGS_CODEC).",
    )(fn)
    return click.option(
        "--model",
        envvar="HIGGS_MODEL",
        default=DEFAULT_MODEL,
        show_default=True,
        metavar="DIR|REPO",
        help="Model: hub id or local folder (env HIGGS_MODEL).",
    )(fn)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="higgs")
def cli():
    """Higgs Audio v2 text-to-speech on MLX."""


# say ---------------------------------------------------------------------------


def read_text(text: str | None, file: str | None) -> str:
    if text is not None and file is not None:
        fail("give the text either as an argument or with -f, not both")
    if file == "-" or (text is None and file is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    if file is not None:
        try:
            return Path(file).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"cannot read {file}: {e.strerror or e}")
        except UnicodeDecodeError:
            fail(f"cannot read {file}: it is not UTF-8 text")
    return text or ""


class StatusLine:
    """A one-line progress display on stderr, redrawn in place (terminals only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.width = 0

    def __call__(self, p):
        if not self.enabled:
            return
        rtf = p.elapsed / p.audio_seconds if p.audio_seconds else 0.0
        filled = round(20 * p.fraction)
        bar = "#" * filled + "-" * (20 - filled)
        chunk = f" chunk {p.chunk + 1}/{p.chunks}" if p.chunks > 1 else ""
        line = (
            f"[{bar}]{chunk} {p.frames} frames | {p.audio_seconds:5.1f} s audio | "
            f"{p.elapsed:5.1f} s | RTF {rtf:4.2f}"
        )
        self.draw(line)

    def draw(self, line: str):
        # Narrower than the terminal (asked each time: it may be resized), else the
        # line wraps and every redraw adds a line. The bar goes first, then the tail.
        room = shutil.get_terminal_size().columns - 1
        if len(line) > room and line.startswith("["):
            line = line[line.index("]") + 1 :].lstrip()
        line = line[:room]
        self.width = min(max(self.width, len(line)), room)
        click.echo("\r" + line.ljust(self.width), err=True, nl=False)

    def clear(self):
        if self.enabled and self.width:
            click.echo("\r" + " " * self.width + "\r", err=True, nl=False)


SPEECH_OPTIONS = (
    "scene",
    "seed",
    "temperature",
    "top_k",
    "top_p",
    "ras_window",
    "ras_max_repeat",
    "max_seconds",
    "chunk_words",
)


def speech_options(fn):
    """The options of how to speak, shared by ``say`` and ``batch``: see :func:`settings_of`."""
    for option in reversed(_SPEECH_DECORATORS):
        fn = option(fn)
    return fn


def settings_of(options: dict, **more) -> Settings:
    """The Settings the speech options say (popped from ``options``)."""
    from higgs_sampling import SamplingParams

    o = {name: options.pop(name) for name in SPEECH_OPTIONS}
    return Settings(
        sampling=SamplingParams(
            temperature=o["temperature"],
            top_k=o["top_k"],
            top_p=o["top_p"],
            ras_window=o["ras_window"],
            ras_max_repeat=o["ras_max_repeat"],
        ),
        seed=o["seed"],
        max_seconds=o["max_seconds"],
        chunk_words=o["chunk_words"],
        scene=o["scene"] or None,
        **more,
    )


_SPEECH_DECORATORS = [
    click.option(
        "--scene",
        default=DEFAULTS.scene,
        show_default=True,
        help="Scene description ('' for none).",
    ),
    click.option(
        "--seed",
        type=click.IntRange(0, 2**64 - 1),
        default=DEFAULTS.seed,
        show_default=True,
        help="Random seed (0 .. 2^64-1).",
    ),
    click.option(
        "--temperature",
        type=click.FloatRange(0),
        default=SAMPLING.temperature,
        show_default=True,
        help="0 is greedy. Sampling defaults are the release README's.",
    ),
    click.option(
        "--top-k",
        type=click.IntRange(0),
        default=SAMPLING.top_k,
        show_default=True,
        help="0 disables.",
    ),
    click.option(
        "--top-p",
        type=click.FloatRange(0, 1, min_open=True),
        default=SAMPLING.top_p,
        show_default=True,
        help="Nucleus mass kept; 1 disables.",
    ),
    click.option(
        "--ras-window",
        type=click.IntRange(0),
        default=SAMPLING.ras_window,
        show_default=True,
        help="Repetition-aware sampling window; 0 disables.",
    ),
    click.option(
        "--ras-max-repeat",
        type=click.IntRange(1),
        default=SAMPLING.ras_max_repeat,
        show_default=True,
        help="Repeats in the window that trigger a redraw.",
    ),
    click.option(
        "--max-seconds",
        type=click.FloatRange(0, min_open=True),
        default=DEFAULTS.max_seconds,
        show_default=True,
        help="Most audio to make for the whole text.",
    ),
    click.option(
        "--chunk-words",
        type=click.IntRange(1),
        default=DEFAULTS.chunk_words,
        show_default=True,
        help="Long-text chunk size, in words.",
    ),
]


@cli.command(epilog=BUILTIN_NOTE)
@click.argument("text", required=False)
@click.option(
    "-f", "--file", "file", metavar="PATH", help="Read the text from PATH ('-' for stdin)."
)
@click.option(
    "-o",
    "--output",
    metavar="PATH",
    help="Output file, or '-' for stdout. [default: from the text]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output format. [default: from -o, else wav]",
)
@click.option(
    "--voice",
    "voices",
    multiple=True,
    metavar="NAME",
    help="Voice name (repeat for SPEAKER0, SPEAKER1, ...). Without one the model picks.",
)
@click.option(
    "--ref-audio",
    multiple=True,
    type=click.Path(),
    metavar="PATH",
    help="Reference recording to clone (repeatable).",
)
@click.option("--ref-text", multiple=True, help="Transcript of each --ref-audio, in order.")
@click.option(
    "--max-ref-seconds",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Longest reference recording taken.",
)
@click.option(
    "--ref-in-system",
    is_flag=True,
    help="Put the reference voices in the system turn as audio in (the release's "
    "--ref_audio_in_system_message), instead of as earlier turns.",
)
@speech_options
@click.option("--stream", is_flag=True, help="Write (or play) audio while it is generated.")
@click.option("--play", is_flag=True, help="Play through the speakers (needs the 'play' extra).")
@model_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Print prompt size, frames, timing and memory.")
@friendly
def say(
    text,
    file,
    output,
    fmt,
    voices,
    ref_audio,
    ref_text,
    max_ref_seconds,
    ref_in_system,
    stream,
    play,
    model,
    codec,
    quiet,
    verbose,
    **speech,
):
    """Speak TEXT (or -f FILE, or stdin) into an audio file."""
    text = read_text(text, file).strip()
    if not text:
        fail("there is no text to speak")
    if len(ref_text) != len(ref_audio):
        fail(
            f"{len(ref_audio)} --ref-audio but {len(ref_text)} --ref-text: "
            "give one transcript per recording"
        )
    if output is None and not play:
        output = str(default_path(text, fmt or "wav"))
    fmt = format_for(output or "", fmt) if output else fmt
    if stream and output == "-" and fmt not in STREAMABLE:
        fail(f"{fmt} cannot stream to stdout; use --format wav or pcm")
    if output:
        check_writable(output)  # before any work: a failed write would lose all of it
    settings = settings_of(speech, ref_in_system=ref_in_system)
    # Everything that can be checked is, before loading anything.
    request = Request(text, tuple(voices), tuple(zip(ref_audio, ref_text, strict=True)), settings)
    request.check()
    from higgs_cli.pipeline import check_ref_audio

    for path in ref_audio:
        check_ref_audio(path, max_ref_seconds)
    if voices:
        from higgs_cli.voices import VoiceStore

        store = VoiceStore()
        for name in voices:
            store.get(name)
    if play:
        Player.check()

    import mlx.core as mx

    from higgs_cli.pipeline import Higgs

    say_ = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    t0 = time.perf_counter()
    tts = Higgs.from_pretrained(model, codec)
    tts.max_ref_seconds = max_ref_seconds
    load_s = time.perf_counter() - t0
    status = StatusLine(not quiet and sys.stderr.isatty())
    warn = lambda m: (status.clear(), say_(f"higgs: warning: {m}"))  # noqa: E731
    player = Player(tts.sample_rate) if play else None  # fail before generating, not after
    writer = None
    try:
        if stream:
            writer = Writer(output, fmt, tts.sample_rate) if output else None
            pcm_stream = tts.stream(request, progress=status, warn=warn)
            for pcm in pcm_stream:
                for sink in (writer, player):
                    if sink:
                        sink.write(pcm)
            speech = pcm_stream.speech
        else:
            speech = tts.say(request, progress=status, warn=warn)
            status.clear()
            if output:
                write_clip(output, speech.samples, tts.sample_rate, fmt)
            if player:
                player.write(speech.samples)
    finally:
        status.clear()
        for sink in (writer, player):
            if sink:
                sink.close()
    where = "stdout" if output == "-" else output
    if where:
        say_(
            f"wrote {where}: {speech.duration:.2f} s of audio in {speech.seconds:.2f} s "
            f"(RTF {speech.real_time_factor:.2f})"
        )
    if verbose and not quiet:
        say_(f"  model load     {load_s:.2f} s")
        say_(f"  chunks         {len(speech.chunks)} (stop: {speech.stops()})")
        say_(
            f"  prompt tokens  {speech.prompt_tokens} ({speech.cached_tokens} from cached "
            "voice prefixes)"
        )
        say_(f"  frames         {speech.frames}")
        say_(f"  audio          {speech.duration:.2f} s")
        say_(f"  processing     {speech.seconds:.2f} s (RTF {speech.real_time_factor:.3f})")
        say_(f"  peak memory    {mx.get_peak_memory() / 1e9:.2f} GB")


# batch ---------------------------------------------------------------------------


class BatchLine(StatusLine):
    """The batch's progress: rows done of all, audio seconds, audio s per s, ETA."""

    def show(self, tally):
        if not self.enabled:
            return
        finished = tally.done + tally.failed
        total = max(tally.total - tally.skipped, 1)
        rate = tally.audio_seconds / tally.elapsed if tally.elapsed else 0.0
        eta = tally.elapsed / finished * (total - finished) if finished else float("nan")
        filled = round(20 * finished / total)
        line = (
            f"[{'#' * filled}{'-' * (20 - filled)}] {finished}/{total} rows | "
            f"{tally.audio_seconds:7.1f} s audio | {rate:5.2f} audio s/s | ETA {eta:5.0f} s"
        )
        self.draw(line)


@cli.command("batch")
@click.argument("manifest", metavar="MANIFEST")
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    metavar="OUTDIR",
    help="Folder for <id>.<format> files and results.jsonl (with --ray: one every node sees, "
    "or a URI such as s3://bucket/prefix).",
)
@click.option("--voice", metavar="NAME", help="Voice of rows that name none.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="wav",
    show_default=True,
    help="Format of rows that name none.",
)
@speech_options
@click.option(
    "--ref-in-system",
    is_flag=True,
    help="Rows with ref_audio put it in the system turn as audio in (see higgs say).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Rows decoded together (per Ray actor with --ray).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster: 'auto', 'ray://host:port', or no value to start a local one.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Ray actors, each with the model loaded once.",
)
@click.option(
    "--num-cpus",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="CPUs per Ray actor.",
)
@click.option(
    "--num-gpus",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="GPUs per Ray actor.",
)
@model_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and the summary.")
@friendly
def batch(
    manifest,
    outdir,
    voice,
    fmt,
    ref_in_system,
    max_batch,
    ray_address,
    workers,
    num_cpus,
    num_gpus,
    model,
    codec,
    quiet,
    **speech,
):
    """Speak every row of MANIFEST (JSON Lines or CSV with a header: id, text, and optionally
    voice, ref_audio + ref_text, scene, seed, temperature, top_k, top_p, format) into OUTDIR.

    Resumable: a row whose file and result line exist is skipped. A bad row is recorded in
    results.jsonl and the others go on; the exit status is 1 if any row failed."""
    from higgs_cli.batch import Defaults, Results, Tally, entry, read_manifest
    from higgs_cli.batch_ray import Outdir, UriResults, import_ray, is_uri

    if voice:
        from higgs_cli.voices import check_name

        check_name(voice)
    if ray_address is not None:
        import_ray()  # a clear line now if the extra is missing
    elif is_uri(outdir):
        fail(f"{outdir}: a URI as OUTDIR needs --ray (locally, give a folder)")
    defaults = Defaults(settings_of(speech, ref_in_system=ref_in_system), voice, fmt)
    rows = read_manifest(manifest, defaults)
    if not is_uri(outdir):
        out = Path(outdir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".higgs-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            fail(f"cannot write into {outdir}: {e.strerror or e}")
    store_out = Outdir(outdir)
    results = Results(Path(outdir)) if not is_uri(outdir) else UriResults(store_out)
    tally = Tally(total=len(rows))
    status = BatchLine(not quiet and sys.stderr.isatty())
    todo, bad = [], []
    for row in rows:
        if row.error is None and row.id in results.done and store_out.exists(row.output):
            tally.skipped += 1
        elif row.error is None:
            todo.append(row)
        else:
            bad.append(row)
    _check_voices(todo, bad)

    def record(result):
        results.add(result)
        tally.count(result)
        status.show(tally)

    for row in bad:
        record(entry(row, None, error=row.error))
    if todo and ray_address is None:
        from higgs_cli.batch import run_local
        from higgs_cli.pipeline import Higgs

        tts = Higgs.from_pretrained(model, codec)

        def warn(message):
            if not quiet:
                status.clear()
                click.echo(f"higgs: warning: {message}", err=True)

        try:
            run_local(
                tts,
                todo,
                Path(outdir),
                results,
                tally,
                max_batch=max_batch,
                on_result=lambda r: status.show(tally),
                warn=warn,
            )
        finally:
            status.clear()
    elif todo:
        from higgs_cli.batch_ray import run_ray

        voices, items = _ray_items(todo, model, codec, record)
        try:
            for result in run_ray(
                ray_address,
                items,
                voices,
                outdir,
                model=model,
                codec=codec,
                workers=workers,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                max_batch=max_batch,
            ):
                record(result)
        finally:
            status.clear()
    click.echo(f"higgs batch: {tally.summary()}", err=True)
    if tally.failed:
        sys.exit(1)


def _check_voices(todo: list, bad: list):
    """Rows naming a voice the store does not know, or a reference recording that is not
    audio or is too long (from its header), fail now, before anything loads."""
    from higgs_cli.pipeline import MAX_REF_SECONDS, check_ref_audio
    from higgs_cli.settings import HiggsError
    from higgs_cli.voices import VoiceError, VoiceStore

    store = VoiceStore()
    known: dict[str, str | None] = {}  # voice: why it cannot be used
    for row in list(todo):
        if row.ref is not None:
            try:
                check_ref_audio(row.ref[0], MAX_REF_SECONDS)
            except HiggsError as e:
                row.error = " ".join(str(e).split())
                todo.remove(row)
                bad.append(row)
            continue
        if row.voice is None:
            continue
        if row.voice not in known:
            try:
                store.get(row.voice)
                known[row.voice] = None
            except VoiceError as e:
                known[row.voice] = " ".join(str(e).split())
        if (problem := known[row.voice]) is not None:
            row.error = problem
            todo.remove(row)
            bad.append(row)


def _ray_items(todo: list, model, codec, record):
    """Every voice the rows use as (transcript, codes) and the rows as plain dicts; rows
    whose voice cannot be resolved are recorded as failed."""
    import json

    from higgs_cli.batch import entry
    from higgs_cli.pipeline import Higgs
    from higgs_cli.settings import HiggsError

    voices, problems, tts, encoded = {}, {}, None, {}
    for row in todo:
        key = row.voice or (f"ref:{row.ref[0]}|{row.ref[1]}" if row.ref else None)
        if key is None or key in voices or key in problems:
            continue
        try:
            if tts is None:  # pins and encodings need the model and codec, once
                tts = Higgs.from_pretrained(model, codec)
            if row.ref:
                path = str(Path(row.ref[0]).resolve())
                if path not in encoded:  # each distinct file once
                    encoded[path] = tts.encode_file(path).tolist()
                voices[key] = (" ".join(row.ref[1].split()), encoded[path])
            else:
                speaker = tts.speaker(row.voice)
                if speaker.transcript is None or speaker.codes is None:
                    raise HiggsError(f"voice {row.voice!r} has no recording to clone")
                voices[key] = (speaker.transcript, speaker.codes.tolist())
        except Exception as e:
            problems[key] = " ".join(str(e).split()) or type(e).__name__
    del tts
    items = []
    for row in todo:
        key = row.voice or (f"ref:{row.ref[0]}|{row.ref[1]}" if row.ref else None)
        if key in problems:
            record(entry(row, None, error=problems[key]))
            continue
        s = row.request.settings
        changes = {
            "seed": s.seed,
            "temperature": s.sampling.temperature,
            "top_k": s.sampling.top_k,
            "top_p": s.sampling.top_p,
            "ras_window": s.sampling.ras_window,
            "ras_max_repeat": s.sampling.ras_max_repeat,
            "max_seconds": s.max_seconds,
            "chunk_words": s.chunk_words,
            "scene": s.scene,
            "ref_in_system": s.ref_in_system,
        }
        items.append(
            {
                "line": row.line,
                "id": row.id,
                "format": row.format,
                "text": row.request.text,
                "voice": key or "",
                "settings": json.dumps(changes),
            }
        )
    return voices, items


# voices --------------------------------------------------------------------------


@cli.group(epilog=BUILTIN_NOTE)
def voices():
    """List, add, show and remove voices."""


@voices.command("list")
@friendly
def voices_list():
    """List the voices."""
    from higgs_cli.voices import VoiceStore

    store = VoiceStore()
    click.echo(BUILTIN_NOTE, err=True)
    for v in store.list():
        if v.problem:
            click.echo(f"{v.name:<20} damaged   {v.problem}")
            continue
        what = v.transcript if v.kind == "recording" else v.description
        click.echo(f"{v.name:<20} {v.kind:<9} {shorten(what or '', 60)}")


def shorten(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


@voices.command("show")
@click.argument("name")
@friendly
def voices_show(name):
    """Show one voice."""
    from higgs_cli.voices import VoiceStore

    store = VoiceStore()
    v = store.get(name)
    click.echo(f"name         {v.name}")
    click.echo(f"kind         {v.kind}")
    if v.description:
        click.echo(f"description  {v.description}")
    if v.transcript:
        click.echo(f"transcript   {v.transcript}")
    if v.audio:
        click.echo(f"recording    {v.audio}")
    folder = store.root / name
    stored = sorted(p.stem.removeprefix("codes-") for p in folder.glob("codes-*.npy"))
    click.echo(f"stored codes {', '.join(stored) or 'none yet'}")
    if v.kind == "builtin":
        for key, made in store.pins(name).items():
            how = ", ".join(f"{k} {made[k]}" for k in ("seed", "seconds") if k in made)
            click.echo(
                f"pin {key} made by {made.get('model', 'an unnoted model')}"
                + (f" ({how})" if how else "")
            )


@voices.command("add")
@click.argument("name")
@click.option(
    "--audio", required=True, type=click.Path(), help="A recording of the voice (wav/flac/ogg)."
)
@click.option("--text", required=True, help="What the recording says.")
@click.option("--force", is_flag=True, help="Replace a voice of the same name.")
@click.option(
    "--max-seconds",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Longest recording taken.",
)
@click.option(
    "--codec",
    envvar="HIGGS_CODEC",
    default=DEFAULT_CODEC,
    show_default=True,
    metavar="DIR|REPO",
    help="Audio tokenizer: hub id or local folder (env HIGGS_CODEC).",
)
@friendly
def voices_add(name, audio, text, force, max_seconds, codec):
    """Add voice NAME from a recording and its transcript."""
    from higgs_cli.pipeline import add_voice
    from higgs_cli.voices import VoiceStore, check_name

    check_name(name)
    if not Path(audio).is_file():
        fail(f"audio file {audio} does not exist")
    from higgs_cli.pipeline import check_ref_audio

    check_ref_audio(audio, max_seconds)
    voice = add_voice(VoiceStore(), codec, name, audio, text, force=force, max_seconds=max_seconds)
    click.echo(f"added voice {voice.name!r}", err=True)


@voices.command("remove")
@click.argument("name")
@friendly
def voices_remove(name):
    """Remove voice NAME (for a built-in voice: forget its pin)."""
    from higgs_cli.voices import VoiceStore

    result = VoiceStore().remove(name)
    click.echo(f"{name!r}: {result}", err=True)


# convert ---------------------------------------------------------------------------

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


@cli.command()
@click.argument("src")
@click.argument("dst", type=click.Path())
@click.option("--bits", type=click.Choice(["4", "6", "8"]), required=True, help="Bits per weight.")
@click.option(
    "--group-size",
    type=click.Choice(["32", "64", "128"]),
    default="64",
    show_default=True,
    help="Weights sharing one scale and bias (smaller: closer to bf16, larger file).",
)
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
@friendly
def convert(src, dst, bits, group_size, force):
    """Quantize model SRC (hub id or folder) into folder DST."""

    from higgs_core import load_model, quantize, resolve_path, save_model

    out = Path(dst)
    src_path = resolve_path(src)
    here, there = out.resolve(), src_path.resolve()
    if here == there or there in here.parents:
        fail(f"{dst} is the source model {src} or inside it: write the copy somewhere else")
    if out.exists() and not out.is_dir():
        fail(f"{dst} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        fail(f"{dst} is not empty (pass --force to write into it)")
    model = load_model(src_path)
    quantize(model, bits=int(bits), group_size=int(group_size))
    save_model(model, out)
    for name in TOKENIZER_FILES:
        if (src_path / name).is_file():
            shutil.copyfile(src_path / name, out / name)
    click.echo(f"wrote {bits}-bit model to {dst}", err=True)


# bench -----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--layers",
    type=click.IntRange(1, 28),
    default=28,
    show_default=True,
    help="Real-size layers to build (of 28); fewer for a quick look.",
)
@click.option(
    "--bits",
    type=click.Choice(["0", "4", "6", "8"]),
    multiple=True,
    default=("0", "8", "4"),
    show_default=True,
    help="Precisions to time: 0 is unquantized --dtype (repeatable).",
)
@click.option(
    "--dtype",
    type=click.Choice(["bfloat16", "float16", "float32"]),
    default="bfloat16",
    show_default=True,
    help="Float type of the random weights (and of activations).",
)
@click.option(
    "--group-size",
    type=click.Choice(["32", "64", "128"]),
    default="64",
    show_default=True,
    help="Quantization group size, with --bits.",
)
@click.option(
    "--frames", type=click.IntRange(2), default=16, show_default=True, help="Timed decode steps."
)
@click.option(
    "--prompt",
    "prompt_length",
    type=click.IntRange(8),
    default=256,
    show_default=True,
    help="Prompt positions for prefill.",
)
@click.option(
    "--batch",
    "batch_sizes",
    type=click.IntRange(1, 64),
    multiple=True,
    help="Time batched decoding at these batch sizes instead (repeatable: --batch 1 --batch 8).",
)
@friendly
def bench(layers, bits, dtype, group_size, frames, prompt_length, batch_sizes):
    """Time the model at its real size with random weights (no download)."""
    import mlx.core as mx

    from higgs_core.bench import run, run_batched

    click.echo(f"higgs {__version__}, mlx {mx.__version__}, device {mx.default_device()}")
    if batch_sizes:
        for b in bits:
            figures = run_batched(
                layers=layers,
                dtype=getattr(mx, dtype),
                bits=int(b),
                group_size=int(group_size),
                sizes=tuple(sorted(set(batch_sizes))),
                frames=frames,
                prompt_length=prompt_length,
            )
            click.echo("\n" + "\n".join(figures.lines()))
        return
    for b in bits:
        figures = run(
            layers=layers,
            dtype=getattr(mx, dtype),
            bits=int(b),
            group_size=int(group_size),
            frames=frames,
            prompt_length=prompt_length,
        )
        click.echo("\n" + "\n".join(figures.lines()))


# serve -----------------------------------------------------------------------------


@cli.command()
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
@click.option(
    "--max-ref-seconds",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Longest voice recording an upload may hold.",
)
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
