"""The `higgs` command."""

import click

from higgs_cli import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="higgs")
def cli():
    """Higgs Audio v2 text-to-speech on MLX."""
