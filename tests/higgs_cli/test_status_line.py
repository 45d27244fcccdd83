"""The progress line is redrawn in place, so it must never wrap."""

import os

import pytest

from higgs_cli.commands.batch import BatchLine
from higgs_cli.commands.common import StatusLine
from higgs_cli.speech import Progress


@pytest.fixture
def terminal(monkeypatch):
    def set_width(columns):
        monkeypatch.setattr(
            "shutil.get_terminal_size", lambda fallback=None: os.terminal_size((columns, 24))
        )

    return set_width


def drawn(capsys):
    return [d for d in capsys.readouterr().err.split("\r") if d.strip()]


@pytest.mark.parametrize("columns", [20, 40, 60, 80, 200])
def test_progress_fits_the_terminal(terminal, capsys, columns):
    terminal(columns)
    line = StatusLine(True)
    for frames in (5, 50, 500):
        line(Progress(1, 3, frames, 600, 123.4, 456.7))
    for draw in drawn(capsys):
        assert len(draw) <= columns - 1, (columns, draw)
    line(Progress(1, 3, 500, 600, 123.4, 456.7))
    last = drawn(capsys)[-1].rstrip()
    if columns >= 80:  # room for everything, bar included
        assert last.startswith("[") and "RTF" in last
    elif columns >= 60:  # the bar gives way first
        assert not last.startswith("[") and "123.4 s audio" in last


def test_at_80_columns_the_line_keeps_its_bar_and_length_through_every_chunk(terminal, capsys):
    terminal(80)
    line = StatusLine(True)
    total = 0
    for chunk in range(12):
        for frames in (1, 40, 400):
            line(
                Progress(
                    chunk, 12, frames, 600, 0.5 * chunk, 2.0 * chunk, text_frames=total + frames
                )
            )
        total += 400
    draws = [d.rstrip() for d in drawn(capsys)]
    assert all(d.startswith("[") for d in draws), draws
    assert len({len(d) for d in draws}) == 1, {len(d) for d in draws}  # no flicker
    assert draws[-1].split("]")[1].split()[:3] == ["12/12", str(total), "frames"]


def test_a_narrower_terminal_is_followed(terminal, capsys):
    line = StatusLine(True)
    terminal(120)
    line(Progress(0, 1, 50, 600, 2.0, 1.0))
    terminal(30)
    line(Progress(0, 1, 55, 600, 2.2, 1.1))
    line.clear()
    for draw in drawn(capsys)[1:]:
        assert len(draw) <= 29


def test_batch_line_fits_too(terminal, capsys):
    terminal(50)

    class Tally:
        done, failed, total, skipped, audio_seconds, elapsed = 3, 1, 10, 0, 42.0, 12.0

    BatchLine(True).show(Tally())
    (draw,) = drawn(capsys)
    assert len(draw) <= 49 and "rows" in draw
