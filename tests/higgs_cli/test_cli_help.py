"""Every command's options are documented, and those taking a path say so."""

import click
import pytest
from click.testing import CliRunner

from higgs_cli.main import cli

# Options whose value is a file, a folder or a checkpoint (a folder or a hub repo id).
PATH_OPTIONS = {"file", "output", "ref_audio", "audio", "model", "codec"}


def commands(group=cli, name="higgs"):
    yield name, group
    if isinstance(group, click.Group):
        for sub, command in group.commands.items():
            yield from commands(command, f"{name} {sub}")


ALL = list(commands())


@pytest.mark.parametrize("name, command", ALL, ids=[n for n, _ in ALL])
def test_options_have_help_and_path_metavars(name, command):
    ctx = click.Context(command)
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        assert param.help and param.help.strip(), f"{name} {param.opts[0]} has no help text"
        if param.name in PATH_OPTIONS or isinstance(param.type, click.Path):
            metavar = param.make_metavar(ctx)
            assert any(w in metavar for w in ("PATH", "DIR", "FILE")), (name, param.opts, metavar)
    assert command.help, f"{name} has no description"


@pytest.mark.parametrize("name", [n for n, _ in ALL])
def test_help_renders(name):
    r = CliRunner().invoke(cli, [*name.split()[1:], "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output, r.output
