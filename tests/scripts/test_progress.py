"""tcvae_kernels.progress: tqdm on a terminal; into a log (not a terminal) whole lines at most once
per interval and a final one, no carriage returns; silent when disabled."""

import io

from tcvae_kernels.progress import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_lines_into_a_log():
    log = io.StringIO()
    for _ in progress(range(2000), desc="steps", file=log, every=3600):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 2 and "2000/2000" in lines[-1] and lines[-1].startswith("steps")


def test_periodic_lines():
    log = io.StringIO()
    bar = progress(total=5, file=log, every=0.0)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert len(log.getvalue().splitlines()) >= 5 and "\r" not in log.getvalue()


def test_tqdm_on_a_terminal_and_silent_when_disabled():
    tty = _Tty()
    for _ in progress(range(3), file=tty):
        pass
    assert "\r" in tty.getvalue()  # tqdm's in-place bar
    quiet = io.StringIO()
    for _ in progress(range(3), file=quiet, enabled=False):
        pass
    assert quiet.getvalue() == ""
