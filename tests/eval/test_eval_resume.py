"""``rlvr eval --k`` sampling is written incrementally and resumes after an interruption."""

import json

import pytest

from eval_stubs import StubEngine, StubTask
from rlvr.eval.evaluate import SAMPLES_FILE, sample_eval_rows


def _policy(prompt, draw):
    """A random answer from {0..3}: seeded per batch, so reruns must reproduce it."""
    return str(int(draw * 4))


def _run(engine, out, problems, **kw):
    return sample_eval_rows(engine, StubTask(10), problems, out, n=4, temperature=1.0, top_p=1.0,
                            max_new_tokens=4, seed=7, batch_problems=3, meta={"checkpoint": "x"}, **kw)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_and_matches_a_straight_run(tmp_path):
    problems = StubTask(10).problems("eval")
    straight = _run(StubEngine(_policy), tmp_path / "a", problems)
    assert [r["index"] for r in straight] == list(range(10))
    assert all(len(r["completions"]) == 4 and len(r["correct"]) == 4 for r in straight)

    calls = {"n": 0}

    def flaky(prompt, draw):  # dies while sampling the third batch
        calls["n"] += 1
        if calls["n"] > 2 * (3 + 3 * 4):  # two batches of 3 problems: 3 greedy + 12 samples each
            raise Interrupt
        return _policy(prompt, draw)

    with pytest.raises(Interrupt):
        _run(StubEngine(flaky), tmp_path / "b", problems)
    assert len((tmp_path / "b" / SAMPLES_FILE).read_text().splitlines()) == 6  # two whole batches
    with pytest.raises(ValueError, match="temperature"):  # the interrupted run's settings are on disk already
        sample_eval_rows(StubEngine(_policy), StubTask(10), problems, tmp_path / "b", n=4, temperature=0.5,
                         top_p=1.0, max_new_tokens=4, seed=7, batch_problems=3, meta={"checkpoint": "x"})
    with open(tmp_path / "b" / SAMPLES_FILE, "a") as f:  # and a torn line, as a crash mid-write leaves
        f.write('{"index": 6, "prompt": "q6=", "ans')
    engine = StubEngine(_policy)
    resumed = _run(engine, tmp_path / "b", problems)
    assert len(engine.calls) == 2 * 2  # only batches 3 and 4 (greedy + sampled each)
    assert resumed == straight
    assert len((tmp_path / "b" / SAMPLES_FILE).read_text().splitlines()) == 10

    engine = StubEngine(_policy)
    assert _run(engine, tmp_path / "b", problems) == straight and engine.calls == []  # all done: no sampling


def test_partial_batches_are_resampled_and_more_problems_extend_the_run(tmp_path):
    problems = StubTask(10).problems("eval")
    _run(StubEngine(_policy), tmp_path, problems[:7])  # batches [0-2] [3-5] [6]
    engine = StubEngine(_policy)
    rows = _run(engine, tmp_path, problems)  # batch [6-8] was partial: redone, then [9]
    assert [r["index"] for r in rows] == list(range(10)) and len(engine.calls) == 2 * 2
    lines = [json.loads(x) for x in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(10))


def test_other_settings_refuse_to_mix_samples(tmp_path):
    problems = StubTask(4).problems("eval")
    _run(StubEngine(_policy), tmp_path, problems)
    with pytest.raises(ValueError, match="temperature"):
        sample_eval_rows(StubEngine(_policy), StubTask(4), problems, tmp_path, n=4, temperature=0.5, top_p=1.0,
                         max_new_tokens=4, seed=7, batch_problems=3, meta={"checkpoint": "x"})
    with pytest.raises(ValueError, match="checkpoint"):
        sample_eval_rows(StubEngine(_policy), StubTask(4), problems, tmp_path, n=4, temperature=1.0, top_p=1.0,
                         max_new_tokens=4, seed=7, batch_problems=3, meta={"checkpoint": "y"})
