"""The README's commands stay true."""

import os
import re
import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def blocks(lang="sh"):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_first_block_gives_the_two_newcomer_commands():
    first = [line.split("#")[0].strip() for line in blocks()[0].splitlines()]
    assert first == ['uv run higgs say "Good morning." --voice en_woman', "uv run pytest"]


def test_offline_block_runs(tmp_path):
    offline = next(b for b in blocks() if "HIGGS_MODEL=tests/fixtures/tiny-model" in b)
    script = offline.replace("uv run higgs", "higgs").replace(
        "/tmp/hello.wav", str(tmp_path / "h.wav")
    )
    env = {**os.environ, "HIGGS_HOME": str(tmp_path / "home")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    out = subprocess.run(
        ["bash", "-ec", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert sf.info(tmp_path / "h.wav").samplerate == 24000
    assert "frames" in out.stderr  # --verbose
