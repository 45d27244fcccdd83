"""The `higgs` command: a group that loads each command's module only when it runs,
so `higgs --help` and a mistyped option answer without importing MLX or a model."""

import importlib

import click

from higgs_cli import __version__
from higgs_cli.commands.common import Failure, UsageFailure

# Each command: the module that holds it (under the command's name) and the opening
# of its help, for `higgs --help` (a test keeps the two alike).
COMMANDS = {
    "batch": ("higgs_cli.commands.batch", "Speak every row of MANIFEST (JSON Lines or CSV"),
    "bench": ("higgs_cli.commands.bench", "Time the model at its real size with random weights"),
    "convert": ("higgs_cli.commands.convert", "Quantize model SRC (hub id or folder) into folder"),
    "say": ("higgs_cli.commands.say", "Speak TEXT (or -f FILE, or stdin) into an audio file."),
    "serve": ("higgs_cli.commands.serve", "Serve OpenAI's speech API (POST /v1/audio/speech)"),
    "voices": ("higgs_cli.commands.voices", "List, add, show and remove voices."),
}


class Commands(click.Group):
    """The ``higgs`` group: commands load on demand, and click's usage errors (a bad
    option value, an unknown command) come out as one line naming the flag, like
    every other error."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module(COMMANDS[name][0]), name)

    def format_commands(self, ctx, formatter):
        # From the table: listing them must not import every command's module.
        rows = []
        for name in self.list_commands(ctx):
            opening = COMMANDS[name][1]
            rows.append((name, opening if opening.endswith(".") else f"{opening}..."))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx, args):
        if not args:  # bare `higgs`: what to type, not the whole help
            raise UsageFailure(
                f"give a command ({', '.join(self.list_commands(ctx))}); higgs --help says more"
            )
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise UsageFailure(one_line(e)) from e

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            if isinstance(e, Failure):
                raise
            raise UsageFailure(one_line(e)) from e


def one_line(error: click.UsageError) -> str:
    """click's message, its choices listed on one line."""
    return " ".join(error.format_message().split())


def version_line() -> str:
    """higgs's version, and what it runs on: MLX's version and device, and the CPU
    kernels' instruction set where they run."""
    from importlib.metadata import version

    import mlx.core as mx

    device = mx.default_device()
    where = "the CPU"
    if device != mx.cpu:
        where = "Metal" if mx.metal.is_available() else "CUDA" if mx.cuda.is_available() else "GPU"
    kernels = "no CPU kernels (not installed)"
    try:
        import higgs_kernels

        if higgs_kernels.available():
            kernels = f"CPU kernels {higgs_kernels.isa()}"
    except ImportError:
        pass
    if device != mx.cpu:
        kernels = "stock MLX ops"
    return f"higgs {__version__} (mlx {version('mlx')} on {where}; {kernels})"


def show_version(ctx, _param, value):
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit()


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=show_version,
    help="Show the version, MLX's and what it runs on, and exit.",
)
def cli():
    """Higgs Audio v2 text-to-speech on MLX."""
