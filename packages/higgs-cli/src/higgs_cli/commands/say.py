"""`higgs say`: one text into an audio file, a stream or the speakers."""

import sys
import time

import click

from higgs_cli.commands.common import (
    BUILTIN_NOTE,
    StatusLine,
    UsageFailure,
    check_reads_audio_in,
    fail,
    friendly,
    max_ref_seconds_option,
    model_options,
    read_text,
    settings_of,
    speech_options,
)
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
from higgs_cli.settings import Request, speaker_gaps


@click.command(epilog=BUILTIN_NOTE)
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
@max_ref_seconds_option
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
    if quiet and verbose:
        raise UsageFailure("-q (print only errors) and -v (print more) ask for opposites")
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
    if (gaps := speaker_gaps(text)) and not quiet:
        click.echo(
            f"higgs: note: the text never uses {', '.join(gaps)}; the speakers are still "
            "taken in order, one voice each",
            err=True,
        )
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
    if ref_in_system:
        check_reads_audio_in(model)

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
    writer, first_audio = None, None  # seconds from the start of speaking to the first PCM
    try:
        if stream:
            writer = Writer(output, fmt, tts.sample_rate) if output else None
            started = time.perf_counter()
            pcm_stream = tts.stream(request, progress=status, warn=warn)
            for pcm in pcm_stream:
                if first_audio is None:
                    first_audio = time.perf_counter() - started
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
        quant = tts.model.config.quantization
        # the audio table is never quantized: its type is the activations'
        dtype = str(tts.model.audio_codebook_embeddings.weight.dtype).removeprefix("mlx.core.")
        weights = f"{quant['bits']}-bit weights, {dtype}" if quant else dtype
        say_(f"  precision      {weights}; {tts.model.kernels}")
        say_(f"  model load     {load_s:.2f} s")
        if first_audio is not None:
            say_(f"  first audio    {first_audio:.2f} s")
        say_(f"  chunks         {len(speech.chunks)} (stop: {speech.stops()})")
        say_(
            f"  prompt tokens  {speech.prompt_tokens} ({speech.cached_tokens} from cached "
            "voice prefixes)"
        )
        say_(f"  frames         {speech.frames}")
        say_(f"  audio          {speech.duration:.2f} s")
        say_(f"  processing     {speech.seconds:.2f} s (RTF {speech.real_time_factor:.3f})")
        say_(f"  peak memory    {mx.get_peak_memory() / 1e9:.2f} GB")
