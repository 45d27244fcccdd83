"""The workspace's own rules: lint, import direction, the console script, and
that higgs-sampling installs and runs on its own."""

import ast
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "higgs_sampling",
    "higgs_codec",
    "higgs_core",
    "higgs_cli",
    # Linux only (an environment marker keeps it off other systems).
    pytest.param(
        "higgs_kernels",
        marks=pytest.mark.skipif(sys.platform != "linux", reason="Linux only"),
    ),
]


def run(*cmd, **kw):
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, timeout=600, **kw
    )


def uv():
    from uv import find_uv_bin

    return find_uv_bin()


def test_ruff_is_clean():
    out = run(sys.executable, "-m", "ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr
    out = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = run(lint, "--no-cache")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_import(name):
    mod = __import__(name)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", mod.__version__)


def test_console_script_reports_its_version():
    higgs = Path(sys.executable).with_name("higgs")
    out = run(higgs, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"higgs {version('higgs-cli')} (mlx "), out.stdout


def readme_python(path):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"no python example in {path}"
    return blocks[0]


@pytest.mark.slow
def test_sampling_installs_alone_and_its_readme_example_runs(tmp_path):
    venv = tmp_path / "venv"
    assert run(uv(), "venv", "-q", "--python", sys.executable, venv).returncode == 0
    python = venv / "bin" / "python"
    install = [uv(), "pip", "install", "-q", "--python", python, ROOT / "packages/higgs-sampling"]
    # The cache normally holds everything; fall back to the registry if not.
    out = run(*install, "--offline")
    if out.returncode != 0:
        out = run(*install)
    assert out.returncode == 0, out.stderr

    freeze = run(uv(), "pip", "freeze", "--python", python).stdout
    names = {re.split(r"[=@ ]", line)[0].lower() for line in freeze.splitlines() if line}
    assert "higgs-sampling" in names
    assert names <= {"higgs-sampling", "mlx", "mlx-cpu", "mlx-metal"}, names

    example = readme_python(ROOT / "packages/higgs-sampling/README.md")
    out = run(python, "-c", example)
    assert out.returncode == 0, out.stderr
    label, shape = out.stdout.strip().split(" ", 1)
    assert label in {"eos", "max_frames"}
    assert shape.startswith("(4, ")


def test_no_path_of_a_developers_machine_is_committed():
    # A home folder, this sandbox's work area or a named venv: describe how to make
    # it instead (scripts/README.md does for the reference environment).
    machine = re.compile("|".join(["/" + "work/", "/home/[a-z]", "/Users/[A-Za-z]", "ref" + "env"]))
    files = run("git", "ls-files").stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if name == "uv.lock" or path.suffix in (".npz", ".npy", ".safetensors", ".pth", ".wav"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found += [
            f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if machine.search(line)
        ]
    assert found == []


def test_every_package_type_checks():
    # mypy in basic mode over every package's source ([tool.mypy] in pyproject.toml).
    out = run(sys.executable, "-m", "mypy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout


def test_the_codec_is_fully_annotated():
    # Every parameter of every function in higgs-codec carries a type (self and cls aside),
    # so mypy checks the callers of its public API rather than passing Any through.
    missing = []
    for path in sorted((ROOT / "packages/higgs-codec/src/higgs_codec").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                    if arg is None or arg.arg in ("self", "cls"):
                        continue
                    if arg.annotation is None:
                        missing.append(f"{path.name}:{node.lineno} {node.name}({arg.arg})")
    assert not missing, missing
