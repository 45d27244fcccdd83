"""`higgs batch`: a manifest of texts into audio files, locally or on a Ray cluster."""

import sys
from pathlib import Path

import click

from higgs_cli.commands.common import (
    StatusLine,
    fail,
    friendly,
    max_ref_seconds_option,
    model_options,
    settings_of,
    speech_options,
)
from higgs_cli.output import (
    FORMATS,
)


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


@click.command("batch")
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
@max_ref_seconds_option
@model_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and the summary.")
@friendly
def batch(
    manifest,
    outdir,
    voice,
    fmt,
    ref_in_system,
    max_ref_seconds,
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
    _check_voices(todo, bad, max_ref_seconds)

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
        tts.max_ref_seconds = max_ref_seconds

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

        voices, items = _ray_items(todo, model, codec, record, max_ref_seconds)
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
    results.close()
    click.echo(f"higgs batch: {tally.summary()}", err=True)
    if tally.failed:
        sys.exit(1)


def _check_voices(todo: list, bad: list, max_ref_seconds: float):
    """Rows naming a voice the store does not know, or a reference recording that is not
    audio or is too long (from its header), fail now, before anything loads."""
    from higgs_cli.pipeline import check_ref_audio
    from higgs_cli.settings import HiggsError
    from higgs_cli.voices import VoiceError, VoiceStore

    store = VoiceStore()
    known: dict[str, str | None] = {}  # voice: why it cannot be used
    for row in list(todo):
        if row.ref is not None:
            try:
                check_ref_audio(row.ref[0], max_ref_seconds)
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


def _ray_items(todo: list, model, codec, record, max_ref_seconds: float):
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
                tts.max_ref_seconds = max_ref_seconds
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
