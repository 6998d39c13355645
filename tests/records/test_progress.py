"""StepProgress: a tqdm bar on a terminal, short status lines elsewhere, never on stdout."""

import io
import re

import pytest

from rlvr.records.progress import StepProgress, default_every, format_duration


class FakeClock:
    def __init__(self, per_step: float):
        self.t, self.per_step = 0.0, per_step

    def __call__(self) -> float:
        return self.t

    def tick(self):
        self.t += self.per_step


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def _run(total, initial=0, every=None, stream=None, per_step=0.52, records=None, stop=None):
    stream = io.StringIO() if stream is None else stream
    clock = FakeClock(per_step)
    p = StepProgress(total, initial=initial, every=every, stream=stream, clock=clock)
    for step in range(initial + 1, (stop or total) + 1):
        clock.tick()
        p.update(step, (records or {}).get(step, {"reward_mean": 0.412, "accuracy": 0.391}))
    p.close()
    return stream.getvalue(), p


def _steps(text):
    return [int(m) for m in re.findall(r"^\[RL\] step (\d+)/", text, flags=re.M)]


def test_status_line_format():
    text, p = _run(250)
    assert p.mode == "lines" and p.every == 10
    line = next(x for x in text.splitlines() if x.startswith("[RL] step 50/"))
    assert line == "[RL] step 50/250 | reward 0.412 | acc 0.391 | 0.52 s/step | eta 1m44s"
    assert text.splitlines()[-1] == "[RL] step 250/250 | reward 0.412 | acc 0.391 | 0.52 s/step | took 2m10s"


def test_about_twenty_lines_per_run_and_the_last_step_always():
    text, _ = _run(250)
    assert _steps(text) == list(range(10, 251, 10))
    text, _ = _run(23, every=5)
    assert _steps(text) == [5, 10, 15, 20, 23]
    text, _ = _run(1000)
    assert _steps(text) == list(range(50, 1001, 50))


def test_every_step_for_tiny_runs():
    text, _ = _run(7)
    assert _steps(text) == [1, 2, 3, 4, 5, 6, 7]
    assert [default_every(n) for n in (1, 20, 40, 100, 250, 500, 1000, 5000)] == [1, 1, 2, 5, 10, 25, 50, 250]


def test_a_resumed_run_prints_at_the_same_steps_and_times_only_its_own_steps():
    text, _ = _run(250, initial=200, per_step=1.0)
    assert _steps(text) == list(range(210, 251, 10))
    assert "[RL] step 210/250 | reward 0.412 | acc 0.391 | 1.00 s/step | eta 40s" in text


def test_a_run_stopped_early_prints_its_last_step_on_close():
    text, _ = _run(250, stop=37)
    assert _steps(text) == [10, 20, 30, 37]


def test_missing_or_odd_values_are_tolerated():
    text, _ = _run(3, records={1: {}, 2: {"reward_mean": float("nan"), "accuracy": 0.5}, 3: {"accuracy": None}})
    lines = text.splitlines()
    assert lines[0].startswith("[RL] step 1/3 | 0.52 s/step")
    assert lines[1].startswith("[RL] step 2/3 | acc 0.500 |")
    assert lines[2].startswith("[RL] step 3/3 | 0.52 s/step")


def test_disabled_prints_nothing():
    stream = io.StringIO()
    p = StepProgress(10, enabled=False, stream=stream)
    for s in range(1, 11):
        p.update(s, {"reward_mean": 1.0})
    p.close()
    assert p.mode == "off" and stream.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar_with_reward_and_accuracy():
    text, p = _run(5, stream=FakeTTY())
    assert p.mode == "bar"
    assert "reward=0.412" in text and "acc=0.391" in text and "5/5" in text
    assert "[RL] step" not in text


def test_ci_gets_status_lines_even_on_a_terminal(monkeypatch):
    monkeypatch.setenv("CI", "true")
    text, p = _run(5, stream=FakeTTY())
    assert p.mode == "lines" and _steps(text) == [1, 2, 3, 4, 5]


def test_default_stream_is_stderr_and_nothing_goes_to_stdout(capsys):
    p = StepProgress(4)
    for s in range(1, 5):
        p.update(s, {"reward_mean": 0.5, "accuracy": 0.25})
    p.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert _steps(err) == [1, 2, 3, 4] and "reward 0.500 | acc 0.250" in err


def test_format_duration():
    assert [format_duration(s) for s in (0, 45, 104, 3599, 7380, float("inf"))] == \
        ["0s", "45s", "1m44s", "59m59s", "2h03m", "?"]
