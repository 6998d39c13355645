"""TRL's tool contract in an rlvr episode (rlvr.envs.trl_tools): a TRL-style environment class and plain tool
functions run unchanged, on the Qwen3 stand-in (byte-level BPE, ChatML with tools). The episode's ids are checked
against the chat template's own rendering of the whole conversation (independent of rlvr's seam), and the loss mask
against the turns the policy wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlvr.envs import make_env, parse_tool_calls
from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.stand_in import CHATML_TOOLS_TEMPLATE
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.episodes import EpisodeLimits, env_correct, run_episodes
from rlvr.tasks import make_task
from rlvr.tasks.base import Problem

from tests.rollout.test_episodes import ScriptedEngine

USER = str(Path(__file__).with_name("trl_style_env.py"))


@pytest.fixture(scope="module")
def tok(stand_in):
    _, tokenizer = load_model_and_tokenizer(stand_in("qwen3_instruct"))
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    return tokenizer


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _call(name, **arguments):
    import json

    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_tool_calls_are_read_in_the_hermes_format():
    calls, errors = parse_tool_calls('ok <tool_call>\n{"name": "add", "arguments": {"amount": 2}}\n</tool_call>'
                                     '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
                                     "<tool_call>{oops}</tool_call><tool_call>[1]</tool_call>")
    assert calls == [{"name": "add", "arguments": {"amount": 2}}, {"name": "f", "arguments": {"x": 1}}]
    assert len(errors) == 2 and "JSON" in errors[0]
    assert parse_tool_calls("12") == ([], [])


def test_a_trl_environment_class_runs_unchanged_and_the_ids_are_the_templates(tok):
    env = make_env("trl", environment_factory=f"{USER}:Counter")
    assert sorted(env.functions) == ["add", "fail"]  # public methods, not reset / get_reward
    problem = Problem("Reach 5.", "5", {})
    turns = [_call("add", amount=2) + "<|im_end|>", _call("fail") + _call("add", amount=3) + "<|im_end|>",
             "Done: 5<|im_end|>"]
    engine = ScriptedEngine(tok, [_ids(tok, t) for t in turns])
    r = run_episodes(engine, tok, [env], [problem], [0], SamplingParams(max_new_tokens=256), EpisodeLimits(4, 2048))
    assert r.finish_reason == ["stop"] and r.extras["turns"] == [3]
    assert r.extras["turn_rewards"] == [[0.0, 1.0, 0.0]]  # get_reward's changes: it sums to get_reward() = 1
    assert r.extras["final_info"][0] == {"calls": 3, "tool_failures": 1}

    # independent of rlvr's seam: the template renders the whole conversation; the episode is that, token for token
    conversation = [{"role": "user", "content": "Reach 5. (the counter starts at 0)"},
                    {"role": "assistant", "content": _call("add", amount=2)},
                    {"role": "tool", "name": "add", "content": "2"},
                    {"role": "assistant", "content": _call("fail") + _call("add", amount=3)},
                    {"role": "tool", "name": "fail", "content": "{'error': 'the tool broke'}"},
                    {"role": "tool", "name": "add", "content": "5"},
                    {"role": "assistant", "content": "Done: 5"}]
    whole = tok.apply_chat_template(conversation, tools=env.tools, tokenize=False)
    assert whole.endswith("<|im_end|>\n")
    expected = _ids(tok, whole[:-1])  # the last turn ends at the sampled <|im_end|>
    P = int(r.prompt_mask.sum())
    got = r.prompt_ids[0, -P:].tolist() + r.completion_ids[0, :int(r.completion_mask.sum())].tolist()
    assert got == expected, (tok.decode(got), whole)

    # the loss mask is 1 exactly on the three sampled turns
    mask = r.loss_mask[0, :int(r.completion_mask.sum())].tolist()
    policy = [tok.decode([t]) for t, m in zip(r.completion_ids[0].tolist(), mask) if m]
    assert "".join(policy) == "".join(turns)
    env_text = tok.decode([t for t, m in zip(r.completion_ids[0].tolist(), mask) if not m])
    assert env_text.startswith("\n<|im_start|>user\n<tool_response>\n2\n</tool_response><|im_end|>\n")
    assert "<tool_call>" not in env_text and env_text.endswith("<|im_start|>assistant\n")


def test_plain_tool_functions_with_the_tasks_verifier(tok):
    task = make_task("arithmetic", min_digits=1, max_digits=1, ops="*")
    problem = task.problems("train", 1)[0]
    a, b = problem.meta["operands"]
    env = make_env("trl", {"task": task}, tools=[f"{USER}:multiply", f"{USER}:subtract"])
    engine = ScriptedEngine(tok, [_ids(tok, _call("multiply", a=a, b=b) + _call("subtract", a=a, b=b)
                                       + _call("nope") + "<|im_end|>"),
                                  _ids(tok, f"{a * b}<|im_end|>")])
    r = run_episodes(engine, tok, [env], [problem], [0], SamplingParams(max_new_tokens=256), EpisodeLimits(3, 2048))
    transcript = "".join(text for _, text in r.extras["transcript"][0])
    assert f"<tool_response>\n{a * b}\n</tool_response>" in transcript  # the sync tool
    assert f"<tool_response>\n{a - b}\n</tool_response>" in transcript  # the async one, run to completion
    assert "Tool nope not found." in transcript
    assert env_correct(r).tolist() == [1.0] and r.extras["turn_rewards"][0][-1] == 1.0


#: a response template (transformers' parse_response) for a tool-call format the Hermes reader does not know
FUNCTION_FORMAT = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {"open_pattern": r"<function=(?P<name>\w+)>", "close_pattern": r"</function>\s*",
                       "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def test_the_tokenizers_own_response_parser_reads_the_calls(stand_in):
    _, tokenizer = load_model_and_tokenizer(stand_in("qwen3_instruct"))
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    tokenizer.response_template = FUNCTION_FORMAT
    env = make_env("trl", {"tokenizer": tokenizer}, environment_factory=f"{USER}:Counter")
    engine = ScriptedEngine(tokenizer, [_ids(tokenizer, '<function=add>{"amount": 5}</function><|im_end|>'),
                                        _ids(tokenizer, "<function=add>{oops}</function><|im_end|>"),
                                        _ids(tokenizer, "5<|im_end|>")])
    r = run_episodes(engine, tokenizer, [env], [Problem("Reach 5.", "5", {})], [0],
                     SamplingParams(max_new_tokens=256), EpisodeLimits(4, 2048))
    assert r.extras["turns"] == [3] and sum(r.extras["turn_rewards"][0]) == 1.0
    assert r.extras["final_info"][0] == {"calls": 1, "tool_failures": 1}
    assert "invalid tool call" in "".join(text for _, text in r.extras["transcript"][0])
    assert parse_tool_calls('<function=add>{"amount": 5}</function>') == ([], [])  # the Hermes reader can't


def test_max_turns_still_scores_get_reward_and_options_are_checked(tok):
    env = make_env("trl", environment_factory=f"{USER}:Counter")
    engine = ScriptedEngine(tok, [_ids(tok, _call("add", amount=5) + "<|im_end|>")] * 2)
    r = run_episodes(engine, tok, [env], [Problem("Reach 5.", "5", {})], [0], SamplingParams(max_new_tokens=256),
                     EpisodeLimits(1, 2048))
    assert r.finish_reason == ["max_turns"] and sum(r.extras["turn_rewards"][0]) == 1.0
    with pytest.raises(ValueError, match="environment_factory"):
        make_env("trl")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        make_env("trl", environment_factory=f"{USER}:Nope")


def test_a_users_class_is_named_by_its_path_in_the_config(tmp_path):
    from rlvr.config import load_config

    (tmp_path / "my_env.py").write_text(
        "from rlvr.envs import EnvStep\n\n"
        "class Echo:\n"
        "    stop = ()\n"
        "    def __init__(self, task=None, times: int = 1):\n"
        "        self.times = times\n"
        "    def reset(self, problem, seed):\n        return problem.prompt\n"
        "    def step(self, action):\n        return EnvStep(reward=1.0, done=True)\n"
        "    def close(self):\n        pass\n")
    spec = f"{tmp_path / 'my_env.py'}:Echo"
    config = load_config(None, [f"env.name={spec}", "env.options={times: 2}"])
    assert config.env.name == spec
    with pytest.raises(ValueError, match="times"):
        load_config(None, [f"env.name={spec}", "env.options={tiems: 2}"])
    with pytest.raises(ValueError, match="or a class of your own"):
        load_config(None, ["env.name=nope"])
    env = make_env(spec, {"task": None, "tokenizer": None}, times=2)
    assert env.times == 2 and env.step("x").reward == 1.0


@pytest.mark.slow
def test_a_run_with_trl_tools_on_a_chat_model_trains_and_its_prompt_lists_the_tools(stand_in, tmp_path):
    """``rlvr train`` with env.name=trl on the Qwen3 stand-in (its template given tools) runs end to end with
    interleaved episodes (lockstep: the tests above); the episodes' prompts carry the tools' schemas."""
    import json
    import shutil

    from rlvr.config import load_config
    from rlvr.train.loop import train

    model = tmp_path / "chat"
    shutil.copytree(stand_in("qwen3_instruct"), model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    tokenizer.save_pretrained(model)
    # the tools' schemas are ~1200 tokens of this small BPE, past the stand-in's 512 positions (an episode that
    # would pass the context is refused): give the model room, as a real chat model has
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    for interleave in (True,):
        cfg = load_config("configs/grpo_dataset_tiny.yaml", [
            f"model.path={model}", f"run.output_dir={tmp_path}", f"run.name=i{int(interleave)}", "trainer.steps=2",
            "trainer.warmup_steps=0", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8",
            "trainer.num_minibatches=1", "eval.num_problems=2", "eval.samples_per_problem=2", "logging.progress=false",
            "logging.plots=false", "logging.report_to=[]", "logging.samples_every=1", "env.name=trl",
            "env.options={environment_factory: examples/trl_tools.py:CalculatorEnv, "
            "tools: [examples/trl_tools.py:multiply]}", "env.max_turns=2", "env.max_total_tokens=64",
            f"env.interleave={str(interleave).lower()}"])
        result = train(cfg, log=lambda *a: None)
        records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "env/turns" in r] == [1, 2]
        samples = [json.loads(x) for x in (result.run_dir / "samples.jsonl").read_text().splitlines()]
        first = samples[0]["samples"][0] if "samples" in samples[0] else samples[0]
        shown = first["episode_prompt"]
        assert "calculate" in shown and "multiply" in shown and "<tools>" in shown and "submit" in shown
