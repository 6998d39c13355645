"""guess: interval feedback, illegal guesses, the guess budget and reward, and its warm-start transcripts."""

import random

import pytest

from rlvr.envs import make_env


def test_a_game_found_by_bisection_and_its_reward():
    env = make_env("guess")
    assert env.reset(None, seed=7) == "[0,63]" and env.stop == (";",)
    x, lo, hi, n = env.x, 0, 63, 0
    while True:
        g = (lo + hi) // 2
        step = env.step(f"{g};")
        n += 1
        if g == x:
            assert step.done and step.observation == "=" and step.reward == pytest.approx(1 - 0.1 * (n - 1))
            assert step.info["correct"] == 1.0
            break
        lo, hi = (g + 1, hi) if x > g else (lo, g - 1)
        assert step.observation == f"{'>' if x > g else '<'}[{lo},{hi}]" and not step.done
    assert n <= 6
    again = make_env("guess")
    again.reset(None, seed=7)
    assert again.x == x  # a group's episodes reset with one seed guess one number


def test_illegal_guesses_count_and_the_budget_ends_the_game():
    env = make_env("guess", max_guesses=3)
    env.reset(None, seed=1)
    far = 0 if env.x > 31 else 63
    assert env.step("hello;").observation == "![0,63]"
    env.step(f"{far};")
    last = env.step(f"{far};")
    assert last.done and last.reward == 0.0 and last.info["correct"] == 0.0


def test_warm_start_transcripts_train_the_guesses_only():
    env = make_env("guess")
    segments = env.sft_transcript(None, random.Random(3))
    assert segments[0][1] is True and segments[0][0].endswith(";")
    assert all(trained == text.endswith(";") for text, trained in segments)
    assert segments[-1] == ("=", False) or len([s for s in segments if s[1]]) == 8
