"""chain_oracle: the environment writes the first step's result; the whole episode reads as the single-turn chain."""

from rlvr.envs import ChainOracle, make_env
from rlvr.tasks import make_task


def _problem():
    task = make_task("arithmetic_chain", num_train=50, num_eval=10)
    return task, task.problems("train")[0]


def test_an_episode_reads_as_the_single_turn_chain_and_is_rewarded_on_the_answer():
    task, problem = _problem()
    ops, operands = problem.meta["ops"], problem.meta["operands"]
    env = make_env("chain_oracle", task=task)
    assert isinstance(env, ChainOracle) and env.reset(problem, seed=0) == problem.prompt and env.stop == ("=",)
    reference = task.format_sft_target(problem)  # "a op b=c;c op d=e"
    first = f"{operands[0]}{ops[0]}{operands[1]}="
    assert reference.startswith(first)
    step = env.step(first)
    c = reference[len(first):reference.index(";") + 1]
    assert step.observation == c and not step.done and step.reward == 0.0 and env.stop == ()
    rest = reference[len(first) + len(c):]
    last = env.step(rest)
    assert last.done and last.reward == 1.0 and env.transcript == reference
    wrong = rest[: rest.rindex("=") + 1] + str(int(problem.answer) + 1)
    env.reset(problem, seed=0)
    env.step(first)
    assert env.step(wrong).reward == 0.0


def test_a_first_step_that_is_not_the_prompts_gets_no_result():
    task, problem = _problem()
    env = make_env("chain_oracle", task=task)
    env.reset(problem, 0)
    operands, ops = problem.meta["operands"], problem.meta["ops"]
    assert env.step(f"{operands[0]}{ops[0]}{operands[1] + 1}=").observation == "?;"
    env.reset(problem, 0)
    assert env.step("hello=").observation == "?;"


def test_an_unknown_environment_names_the_known_ones():
    import pytest

    with pytest.raises(ValueError, match="chain_oracle"):
        make_env("no_such_env")
