"""A failed extension build must still install: without a compiler, or with one
that cannot compile the extension, the wheel is pure Python and
`higgs_kernels.available()` is False while its ops fall back to stock MLX."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "packages" / "higgs-kernels"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the extension is Linux-only"),
]


def uv():
    from uv import find_uv_bin

    return find_uv_bin()


def run(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)


def build_wheel(tmp_path, env):
    # A copy outside the workspace: the package's own build, as pip would run it.
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    out = tmp_path / "dist"
    cmd = [uv(), "build", "--wheel", src, "-o", out]
    # cwd outside the workspace too, or uv applies the workspace's build settings.
    done = run(*cmd, "--offline", env=env, cwd=tmp_path)
    if done.returncode != 0:  # the cache normally holds the build requirements
        done = run(*cmd, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return wheel, done.stderr


def env_with(**extra):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CXXFLAGS")}
    env.update(extra)
    return env


def assert_pure(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "higgs_kernels/__init__.py" in names
    assert not [n for n in names if n.endswith(".so")], names


def test_no_compiler_gives_a_pure_python_wheel_that_works(tmp_path):
    wheel, log = build_wheel(tmp_path, env_with(CXX=str(tmp_path / "no-such-compiler")))
    assert "no usable C++ compiler" in log
    assert_pure(wheel)

    venv = tmp_path / "venv"
    assert run(uv(), "venv", "-q", "--python", sys.executable, venv).returncode == 0
    python = venv / "bin" / "python"
    install = [uv(), "pip", "install", "-q", "--python", python, wheel]
    done = run(*install, "--offline")
    if done.returncode != 0:
        done = run(*install)
    assert done.returncode == 0, done.stderr
    script = (
        "import mlx.core as mx, higgs_kernels as hk\n"
        "assert not hk.available() and hk.import_error is not None\n"
        "x, w = mx.ones((2, 8)), mx.ones((3, 8))\n"
        "assert mx.array_equal(hk.linear(x, w), x @ w.T)\n"
        "q, k = mx.ones((1, 4, 3, 8)), mx.ones((1, 2, 5, 8))\n"
        "want = mx.fast.scaled_dot_product_attention(q, k, k, scale=0.5, mask='causal')\n"
        "assert mx.array_equal(hk.attention(q, k, k, scale=0.5, causal=True), want)\n"
        "print('stock', hk.linear(x, w).shape)\n"
    )
    done = run(python, "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stock (2, 3)"


def test_a_compiler_that_fails_on_the_extension_still_installs(tmp_path):
    # Passes CMake's compiler checks, fails on every real source file.
    cxx = tmp_path / "broken-c++"
    real = shutil.which("c++") or shutil.which("g++")
    if real is None:
        pytest.skip("no C++ compiler to wrap")
    cxx.write_text(
        "#!/bin/sh\n"
        'case "$*" in *CMakeScratch*|*CMakeTmp*|*CMakeCXXCompilerId*) exec '
        + real
        + ' "$@";; esac\n'
        'case "$*" in *" -c "*) echo "broken compiler" >&2; exit 1;; esac\n'
        "exec " + real + ' "$@"\n'
    )
    cxx.chmod(0o755)
    wheel, log = build_wheel(tmp_path, env_with(CXX=str(cxx)))
    assert "the extension did not build" in log
    assert_pure(wheel)
