"""Progress lines off a terminal, tqdm's bar on one."""

import io
import re

import pytest

from fashiondvc.progress import progress

LINE = re.compile(r"^index: +(\d+)% (\d+)/1000 \[")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_whole_line_every_five_percent():
    log = io.StringIO()
    assert list(progress(range(1000), desc="index", unit="photo", file=log, delay=0)) == \
        list(range(1000))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    counts = [int(LINE.match(line).group(2)) for line in lines]
    assert counts == list(range(0, 1001, 50))  # 0 %, 5 %, ..., 100 %: 21 lines, none twice


def test_a_manual_bar_ends_with_its_last_count_even_between_steps():
    log = io.StringIO()
    with progress(total=101, desc="index", file=log, delay=0) as bar:
        for _ in range(101):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert 18 <= len(lines) <= 22
    assert lines[-1].startswith("index: 100% 101/101")


def test_a_loop_shorter_than_the_delay_prints_nothing():
    log = io.StringIO()
    for _ in progress(range(1000), desc="index", file=log, delay=60):
        pass
    assert log.getvalue() == ""


def test_an_unknown_total_prints_counts_not_percentages():
    log = io.StringIO()
    with progress(desc="download", unit="B", unit_scale=True, file=log, delay=0) as bar:
        bar.update(5 << 20)
    assert log.getvalue().splitlines()[-1].startswith("download: 5.24MB")


def test_on_a_terminal_tqdm_redraws_one_line():
    terminal = _Terminal()
    for _ in progress(range(1000), desc="index", file=terminal, delay=0):
        pass
    text = terminal.getvalue()
    assert "\r" in text and "100%" in text
    assert text.count("\n") == 1  # redrawn with "\r", one newline when it ends


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps"):
        progress(range(3), steps=0)
