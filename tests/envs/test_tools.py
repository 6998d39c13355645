"""Tools and the tools/calc environments: the calculator parses (never evaluates), a call's result comes back in
braces, calls cost reward, too many calls end the episode; an episode with a scripted policy end to end."""

import pytest
import torch

from rlvr.envs import calculator, make_env
from rlvr.tasks import make_task


def test_the_calculator_parses_integer_arithmetic_and_nothing_else():
    assert calculator("47*6") == "282" and calculator(" 12 - 30 ") == "-18" and calculator("-3+4") == "1"
    for bad in ("__import__('os').system('x')", "2**10", "1/0", "", "1+2+3", "9" * 20 + "+1"):
        assert calculator(bad) == "?", bad


def _calc():
    task = make_task("arithmetic", ops="*", num_train=50, num_eval=10)
    problem = task.problems("train")[0]
    env = make_env("calc", task=task)
    assert env.reset(problem, 0) == problem.prompt and env.stop == ("]",)
    return task, problem, env


def test_a_call_returns_the_result_in_braces_and_costs_reward():
    task, problem, env = _calc()
    a, b = problem.meta["operands"][:2]
    step = env.step(f"[{a}*{b}]")
    assert step.observation == "{" + str(a * b) + "}" and not step.done
    last = env.step(problem.answer)
    assert last.done and last.reward == pytest.approx(1.0 - 0.3)
    env.reset(problem, 0)
    assert env.step(problem.answer).reward == 1.0  # answered directly: no cost
    env.reset(problem, 0)
    assert env.step("1").reward == 0.0  # wrong
    env.reset(problem, 0)
    env.step("[1+1]")
    env.step("[1+1]")
    over = env.step("[1+1]")  # a third call: over max_calls
    assert over.done and over.reward == 0.0


def test_unknown_tools_are_named():
    with pytest.raises(ValueError, match="calculator"):
        make_env("tools", tools=["shell"])


def test_a_calc_episode_with_a_scripted_policy(tmp_path):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.episodes import EpisodeLimits, run_episodes

    from tests.rollout.test_episodes import ScriptedEngine

    _, tok = load_model_and_tokenizer(save_tiny(tmp_path / "tiny", seed=0))
    task, problem, env = _calc()
    a, b = problem.meta["operands"][:2]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    engine = ScriptedEngine(tok, [ids(f"[{a}*{b}]"), ids(problem.answer) + [tok.eos_token_id]])
    r = run_episodes(engine, tok, [env], [problem], [0], SamplingParams(max_new_tokens=16), EpisodeLimits(3, 64))
    assert r.texts == [f"[{a}*{b}]{{{a * b}}}{problem.answer}"] and r.finish_reason == ["stop"]
    assert r.extras["turn_rewards"] == [[0.0, pytest.approx(0.7)]]
    from rlvr.rollout.episodes import env_correct

    assert env_correct(r).tolist() == [1.0]  # the environment's judgement (the task's verifier can't read "[..]{..}")
    obs = ids("{" + str(a * b) + "}")
    start = len(ids(f"[{a}*{b}]"))
    assert r.loss_mask[0, start:start + len(obs)].tolist() == [0] * len(obs)
    assert torch.equal(r.completion_ids[0, start:start + len(obs)], torch.tensor(obs))


def test_evaluation_reports_calls_and_accuracy_by_difficulty():
    from types import SimpleNamespace

    from rlvr.envs.tools import Calc
    from rlvr.eval.evaluate import _by_difficulty
    from rlvr.tasks.base import Problem

    assert Calc.difficulty(Problem("47+6=", "53", {"operands": [47, 6], "ops": ["+"]})) == "hard"
    assert Calc.difficulty(Problem("7*6=", "42", {"operands": [7, 6], "ops": ["*"]})) == "easy"
    task = make_task("arithmetic", ops="+-*", same_digits=True)
    levels = [Calc.difficulty(p) for p in task.problems("train", 2000)]
    assert 0.45 < levels.count("easy") / len(levels) < 0.55  # an even mix
    assert all(len({len(str(v)) for v in p.meta["operands"]}) == 1 for p in task.problems("eval"))
    # four episodes: hard (2 calls, right), hard (1 call, wrong), easy (0 calls, right), easy (1 observation)
    extras = {"final_info": [{"calls": 2}, {"calls": 1}, {"calls": 0}, {}], "observations": [2, 1, 0, 1],
              "difficulty": ["hard", "hard", "easy", "easy"]}
    out = _by_difficulty(SimpleNamespace(extras=extras), torch.tensor([1.0, 0.0, 1.0, 1.0]), "sampled")
    assert out == {"sampled_calls": 1.0, "sampled_calls/easy": 0.5, "sampled_accuracy/easy": 1.0,
                   "sampled_share/easy": 0.5, "sampled_calls/hard": 1.5, "sampled_accuracy/hard": 0.5,
                   "sampled_share/hard": 0.5}
