"""What the commands share: failures as one line, the model and speech options, text
input and the progress line. Nothing here imports MLX: `higgs --help` and argument
errors stay instant."""

import functools
import os
import shutil
import sys
import traceback
from pathlib import Path

import click

from higgs_cli.settings import DEFAULT_CODEC, DEFAULT_MODEL, FRAME_RATE, MAX_REF_SECONDS, Settings

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
            msg = f"{msg}{cli_hint(e)}".replace("`hf download ", f"`{hf_command()} download ")
            click.echo(f"higgs: error: {msg}", err=True)
            sys.exit(1)

    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(wrapper)


def cli_hint(error: Exception) -> str:
    """What to do about a library error, in the command line's words."""
    from higgs_cli.settings import ReferenceTooLong
    from higgs_cli.voices import DamagedVoice, VoiceExists
    from higgs_codec import CodecNotFoundError
    from higgs_core import ModelNotFoundError

    if isinstance(error, ModelNotFoundError):
        if error.repo_id is None:
            return " (given by --model or HIGGS_MODEL)"
        if getattr(error, "codec_found", False):
            return " with --model DIR (or HIGGS_MODEL=DIR)"
        # Offline: the codec is missing too.
        return (
            f" with --model DIR (or HIGGS_MODEL=DIR). higgs needs the codec as well: `hf "
            f"download {DEFAULT_CODEC} --local-dir CODEC_DIR`, then --codec CODEC_DIR "
            "(or HIGGS_CODEC=CODEC_DIR)"
        )
    if isinstance(error, CodecNotFoundError) and error.what == "codec":
        if error.repo_id is None:
            return " (given by --codec or HIGGS_CODEC)"
        return " with --codec DIR (or HIGGS_CODEC=DIR)"
    if isinstance(error, ReferenceTooLong):
        return " (--max-ref-seconds raises the limit)"
    if isinstance(error, VoiceExists):
        return "; remove it first or pass --force"
    if isinstance(error, DamagedVoice):
        return f"; remove it with `higgs voices remove {error.name}`"
    return ""


def hf_command() -> str:
    """The Hugging Face CLI (installed with higgs) as the user can type it: under
    `uv run` the environment's scripts are not on the user's own PATH."""
    if os.environ.get("UV"):
        return "uv run hf"
    if shutil.which("hf"):
        return "hf"
    return f"{sys.executable} -m huggingface_hub.cli.hf"


def max_ref_seconds_option(fn):
    """``--max-ref-seconds``: one name, wherever a reference recording is read."""
    return click.option(
        "--max-ref-seconds",
        type=click.FloatRange(0, min_open=True),
        default=MAX_REF_SECONDS,
        show_default=True,
        help="Longest reference recording taken, in seconds.",
    )(fn)


def codec_option(fn):
    """``--codec``: the audio tokenizer, alone (``voices add``) or with the model."""
    return click.option(
        "--codec",
        envvar="HIGGS_CODEC",
        default=DEFAULT_CODEC,
        show_default=True,
        metavar="DIR|REPO",
        help="Audio tokenizer: hub id or local folder (env HIGGS_CODEC).",
    )(fn)


def model_options(fn):
    fn = codec_option(fn)
    return click.option(
        "--model",
        envvar="HIGGS_MODEL",
        default=DEFAULT_MODEL,
        show_default=True,
        metavar="DIR|REPO",
        help="Model: hub id or local folder (env HIGGS_MODEL).",
    )(fn)


def check_reads_audio_in(model: str):
    """``--ref-in-system`` needs a model that reads audio in its system turn: checked
    in its config.json before anything loads. A model that cannot be found is left
    to the loading, which says how to get it."""
    from higgs_core import ModelConfig, ModelNotFoundError, resolve_path
    from higgs_core.loading import read_config

    try:
        path = resolve_path(model)
    except ModelNotFoundError:
        return
    if not ModelConfig.from_dict(read_config(path)).encode_audio_in_tokens:
        fail(
            f"the model in {path} does not read audio in its system turn "
            "(encode_audio_in_tokens is off in its config); clone without --ref-in-system"
        )


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
        # Fields of fixed width, so the line keeps its length from chunk to chunk (and
        # fits 80 columns, bar included); frames and audio count the whole text alike.
        width = len(str(p.chunks))
        chunk = f" {p.chunk + 1:>{width}}/{p.chunks}" if p.chunks > 1 else ""
        line = (
            f"[{bar}]{chunk} {p.text_frames or p.frames:5d} frames {p.audio_seconds:6.1f} s "
            f"audio {p.elapsed:6.1f} s RTF {rtf:4.2f}"
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
        help=(
            "0 is greedy, yet repetition-aware sampling still redraws a repeated code from "
            "the raw softmax with --seed, as the release does: add --ras-window 0 for a "
            "run no seed changes. Sampling defaults are the release README's."
        ),
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
        type=click.FloatRange(1 / FRAME_RATE),  # one frame of audio at least
        default=DEFAULTS.max_seconds,
        show_default=True,
        help="Most seconds of audio for the whole text (it stops within one frame of it).",
    ),
    click.option(
        "--chunk-words",
        type=click.IntRange(1),
        default=DEFAULTS.chunk_words,
        show_default=True,
        help="Long-text chunk size, in words.",
    ),
]
