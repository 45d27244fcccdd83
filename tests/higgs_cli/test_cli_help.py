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
        ctx = click.Context(group)
        for sub in group.list_commands(ctx):
            yield from commands(group.get_command(ctx, sub), f"{name} {sub}")


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


def test_the_command_list_opens_each_commands_own_help():
    # `higgs --help` lists the commands from a table, without loading them.
    from higgs_cli.main import COMMANDS

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name, (_, opening) in COMMANDS.items():
        help_ = " ".join(cli.get_command(ctx, name).help.split())
        assert help_.startswith(opening.removesuffix("...")), (name, help_)


# What a command line that only asks for help, or is mistyped, may import: click,
# numpy and the project's light modules, never MLX, a model or a codec.
HEAVY = ("mlx", "mlx_lm", "higgs_core", "higgs_codec", "higgs_kernels", "soundfile")
LIGHT_RUNS = [
    ["--help"],
    ["nothing"],
    *[[command, "--help"] for command in ("say", "batch", "serve", "voices", "convert", "bench")],
    ["voices", "add", "--help"],
    ["say", "Hi.", "--top-p", "5"],
    ["say", "Hi.", "--seed", "-1"],
    ["say", "Hi.", "--max-seconds", "0.03"],
    ["serve", "--port", "99999"],
    ["batch"],
]


def test_help_and_argument_errors_import_no_mlx():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from higgs_cli.main import cli\n"
        "try:\n"
        "    cli(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY', code, heavy, file=sys.stderr)\n"
    )
    for args in LIGHT_RUNS:
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith("HEAVY") and line.endswith("[]"), (args, r.stderr[-500:])
        assert line.split()[1] in ("0", "1", "2", "None"), (args, line)


def test_version_names_mlx_the_device_and_the_kernels():
    from importlib.metadata import version

    import mlx.core as mx

    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0
    line = r.output.strip()
    assert line.startswith(f"higgs {version('higgs-cli')} (mlx {version('mlx')} on ")
    assert ("on the CPU;" in line) == (mx.default_device() == mx.cpu)
    try:
        import higgs_kernels

        if higgs_kernels.available() and mx.default_device() == mx.cpu:
            assert f"CPU kernels {higgs_kernels.isa()}" in line
    except ImportError:
        assert "no CPU kernels" in line
