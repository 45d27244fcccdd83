"""The model and the codec are found the same way: a directory, else a hub repo id
(downloaded, or found in the local cache), with the same errors in the same words;
and the command line says which flag or variable names each."""

import shutil
import sys
from pathlib import Path

import httpx
import huggingface_hub
import huggingface_hub.constants
import pytest
from click.testing import CliRunner
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

import higgs_codec
import higgs_core
from higgs_cli.main import cli

LOOKUPS = {
    "model": (higgs_core.resolve_path, higgs_core.ModelNotFoundError, "checkpoint"),
    "codec": (higgs_codec.resolve_path, higgs_codec.CodecNotFoundError, "codec"),
}


@pytest.fixture(params=sorted(LOOKUPS))
def lookup(request, tiny_model, tiny_codec):
    resolve, error, word = LOOKUPS[request.param]
    folder = tiny_model if request.param == "model" else tiny_codec
    return resolve, error, word, folder


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def hub_error(cls):
    """A hub exception as the client raises it."""
    if issubclass(cls, HfHubHTTPError):
        request = httpx.Request("GET", "https://huggingface.co/api/models/someone/repo")
        return cls("from the hub", response=httpx.Response(404, request=request))
    return cls("from the hub")


def test_local_paths(lookup, tmp_path):
    resolve, error, word, folder = lookup
    assert resolve(folder) == folder
    assert resolve(str(folder)) == folder
    with pytest.raises(error, match=rf"is a file; pass the {word}'s directory"):
        resolve(next(p for p in folder.iterdir() if p.is_file()))
    for missing in (tmp_path / "nope", "./not/here", "a/b/c", "~/no-such-folder-xyz"):
        with pytest.raises(error, match=rf"^no such {word} directory: ") as caught:
            resolve(missing)
        assert caught.value.repo_id is None
    with pytest.raises(error, match="no such"):  # a Path is never taken for a repo id
        resolve(tmp_path.__class__("someone/thing"))


def test_offline_and_uncached(lookup, offline_hub):
    resolve, error, _, _ = lookup
    with pytest.raises(error) as caught:
        resolve("someone/absent")
    message = str(caught.value)
    assert message == (
        "cannot download 'someone/absent' from the Hugging Face Hub (offline or unreachable) "
        "and it is not in the local cache. Fetch it where there is a network, e.g. "
        "`hf download someone/absent --local-dir DIR`, then pass DIR instead of the repo id"
    )
    assert caught.value.repo_id == "someone/absent"


def test_found_in_the_cache_offline(lookup, offline_hub):
    resolve, _, _, folder = lookup
    repo = offline_hub / "models--someone--cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit, symlinks=False)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve("someone/cached") == repo / "snapshots" / commit


@pytest.mark.parametrize(
    "raised, said",
    [
        (RepositoryNotFoundError, "neither a local directory nor a Hugging Face Hub repo"),
        (GatedRepoError, "neither a local directory nor a Hugging Face Hub repo"),
        (HfHubHTTPError, "cannot download"),
        (LocalEntryNotFoundError, "cannot download"),
        (ConnectionResetError, "cannot download"),
    ],
)
def test_the_same_hub_errors_are_caught(lookup, monkeypatch, raised, said):
    resolve, error, _, _ = lookup

    def fail(*args, **kwargs):
        raise hub_error(raised)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(error, match=said) as caught:
        resolve("someone/repo")
    assert caught.value.repo_id == "someone/repo"
    assert isinstance(caught.value.__cause__, raised)


def test_a_programming_error_is_not_disguised(lookup, monkeypatch):
    resolve, _, _, _ = lookup

    def fail(*args, **kwargs):
        raise TypeError("a bug, not a missing checkpoint")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(TypeError, match="a bug"):
        resolve("someone/repo")


# the command line ---------------------------------------------------------------------


def say(*args):
    return CliRunner().invoke(cli, ["say", "Hi.", *args])


def test_cli_offline_model_says_the_codec_is_needed_too(home, offline_hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HIGGS_MODEL")
    monkeypatch.delenv("HIGGS_CODEC")
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # this environment's hf
    r = say("-o", str(tmp_path / "x.wav"))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    line = r.stderr
    assert "`hf download bosonai/higgs-audio-v2-generation-3B-base --local-dir DIR`" in line
    assert "--model DIR (or HIGGS_MODEL=DIR)" in line
    assert "`hf download bosonai/higgs-audio-v2-tokenizer --local-dir CODEC_DIR`" in line
    assert "--codec CODEC_DIR (or HIGGS_CODEC=CODEC_DIR)" in line
    assert "load_model" not in line and "Traceback" not in line


def test_cli_offline_model_with_its_codec_here_asks_for_the_model_alone(
    home, offline_hub, monkeypatch, tmp_path
):
    monkeypatch.delenv("HIGGS_MODEL")  # HIGGS_CODEC stays: the tiny codec's folder
    r = say("-o", str(tmp_path / "x.wav"))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "bosonai/higgs-audio-v2-generation-3B-base --local-dir DIR`" in r.stderr
    assert "--model DIR (or HIGGS_MODEL=DIR)" in r.stderr
    assert "codec" not in r.stderr.lower() and "CODEC_DIR" not in r.stderr


@pytest.mark.parametrize("how", ["uv run", "on PATH", "neither"])
def test_cli_download_hint_runs_as_printed(home, offline_hub, monkeypatch, tmp_path, how):
    # The hint names the Hugging Face CLI the way this install can run it.
    monkeypatch.delenv("HIGGS_MODEL")
    monkeypatch.delenv("UV", raising=False)
    if how == "uv run":
        monkeypatch.setenv("UV", "/somewhere/uv")  # what `uv run` sets for its command
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) if how == "on PATH" else "")
    r = say("-o", str(tmp_path / "x.wav"))
    want = {
        "uv run": "`uv run hf download bosonai/",
        "on PATH": "`hf download bosonai/",
        "neither": f"`{sys.executable} -m huggingface_hub.cli.hf download bosonai/",
    }[how]
    assert r.exit_code == 1 and want in r.stderr, r.stderr


def test_cli_offline_codec_is_as_helpful(home, offline_hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HIGGS_CODEC")
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    loaded = []
    monkeypatch.setattr(higgs_core, "load_model", lambda *a, **k: loaded.append(a))
    r = say("-o", str(tmp_path / "x.wav"))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "`hf download bosonai/higgs-audio-v2-tokenizer --local-dir DIR`" in r.stderr
    assert "--codec DIR (or HIGGS_CODEC=DIR)" in r.stderr
    assert loaded == []  # found missing before the model loads


def test_cli_missing_local_folders_name_their_flag(home, tmp_path):
    gone = tmp_path / "gone"
    r = say("--codec", str(gone), "-o", str(tmp_path / "x.wav"))
    assert r.exit_code == 1
    said = f"no such codec directory: {gone} (given by --codec or HIGGS_CODEC)"
    assert r.stderr == f"higgs: error: {said}\n"
    r = say("--model", str(gone), "-o", str(tmp_path / "x.wav"))
    said = f"no such checkpoint directory: {gone} (given by --model or HIGGS_MODEL)"
    assert r.stderr == f"higgs: error: {said}\n"
