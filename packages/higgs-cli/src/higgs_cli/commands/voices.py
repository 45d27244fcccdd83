"""`higgs voices`: the voice store."""

from pathlib import Path

import click

from higgs_cli.commands.common import (
    BUILTIN_NOTE,
    codec_option,
    fail,
    friendly,
    max_ref_seconds_option,
)


@click.group(epilog=BUILTIN_NOTE)
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
@max_ref_seconds_option
@codec_option
@friendly
def voices_add(name, audio, text, force, max_ref_seconds, codec):
    """Add voice NAME from a recording and its transcript."""
    from higgs_cli.pipeline import add_voice
    from higgs_cli.voices import VoiceStore, check_name

    check_name(name)
    if not Path(audio).is_file():
        fail(f"audio file {audio} does not exist")
    from higgs_cli.pipeline import check_ref_audio

    check_ref_audio(audio, max_ref_seconds)
    voice = add_voice(
        VoiceStore(), codec, name, audio, text, force=force, max_seconds=max_ref_seconds
    )
    click.echo(f"added voice {voice.name!r}", err=True)


@voices.command("remove")
@click.argument("name")
@friendly
def voices_remove(name):
    """Remove voice NAME (for a built-in voice: forget its pin)."""
    from higgs_cli.voices import VoiceStore

    result = VoiceStore().remove(name)
    if result == "removed":  # worded as `voices add` words its line
        click.echo(f"removed voice {name!r}", err=True)
    else:
        click.echo(f"forgot the pin of built-in voice {name!r} (made again on next use)", err=True)
