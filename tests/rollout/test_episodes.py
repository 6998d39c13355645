"""Multi-turn episodes (rlvr.rollout.episodes): exact ids and masks with a scripted engine and environment, the
limits, no re-tokenization with a BPE tokenizer that merges digits, and one forward over an episode's ids that
reproduces the lean and HF engines' log-probs on the loss mask."""

from __future__ import annotations

import pytest
import torch

from rlvr.envs.base import EnvStep
from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.logprobs import completion_logits, token_logprobs
from rlvr.models.tiny import save_tiny
from rlvr.rollout.base import Rollout, SamplingParams
from rlvr.rollout.episodes import EpisodeLimits, run_episodes
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.rollout.lean import LeanRolloutEngine
from rlvr.rollout.stops import StopConditions


class ScriptedEngine:
    """Writes the next of ``turns`` (lists of token ids) for every row, log-prob -(id) / 100, applying the
    call's stop conditions as an engine does (a stop token ends the turn and is kept)."""

    def __init__(self, tokenizer, turns: list[list[int]]):
        self.tokenizer, self.turns, self.calls = tokenizer, turns, []
        self.policy_version = 7
        self.stops = StopConditions.for_model(None, tokenizer)

    def generate_ids(self, prompt_ids, params, stops=None):
        self.calls.append(([list(p) for p in prompt_ids], params.max_new_tokens, stops))
        script = self.turns[len(self.calls) - 1][: params.max_new_tokens]
        B = len(prompt_ids)
        ids = torch.tensor([script] * B)
        logp = -ids.float() / 100
        comp, mask, logp, finish, texts = (stops or self.stops).finalize(ids, logp, self.tokenizer)
        return Rollout(prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
                       completion_ids=comp, completion_mask=mask, rollout_logp=logp, finish_reason=finish,
                       prompt_index=torch.arange(B), texts=texts, policy_version=self.policy_version)


class ScriptedEnv:
    """Observation ``o{k};`` after turn k, done after ``done_after`` turns (never, if None), reward k on turn k;
    turn 1 ends at ``=``, later turns at ``later_stop`` (besides the model's own stop tokens)."""

    def __init__(self, done_after: int | None = 2, later_stop=()):
        self.stop, self.later_stop, self.done_after, self.actions = ("=",), later_stop, done_after, []

    def reset(self, problem, seed):
        return problem

    def step(self, action):
        self.actions.append(action)
        self.stop = self.later_stop
        k = len(self.actions)
        return EnvStep(observation=f"o{k};", reward=float(k), done=self.done_after is not None and k >= self.done_after)

    def close(self):
        pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model_and_tokenizer(save_tiny(tmp_path_factory.mktemp("ep") / "tiny", seed=1))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_completion_is_actions_and_observations_with_exact_masks(tiny):
    _, tok = tiny
    a1, a2 = _ids(tok, "12+7="), _ids(tok, "19-3=16") + [tok.eos_token_id]
    engine = ScriptedEngine(tok, [a1 + _ids(tok, "99"), a2])  # turn 1 must stop at the environment's "="
    env = ScriptedEnv(done_after=2)
    r = run_episodes(engine, tok, [env], ["12+7-3="], [0], SamplingParams(max_new_tokens=16), EpisodeLimits(4, 64))
    o1 = _ids(tok, "o1;")
    n = len(a1) + len(o1) + len(a2)
    assert r.completion_ids[0, :n].tolist() == a1 + o1 + a2  # the observation of the last turn is not appended
    assert r.completion_mask[0].tolist() == [1] * n
    assert r.loss_mask[0].tolist() == [1] * len(a1) + [0] * len(o1) + [1] * len(a2)
    assert (r.rollout_logp[0][r.loss_mask[0] == 0] == 0).all()
    assert torch.equal(r.rollout_logp[0][r.loss_mask[0] == 1], -torch.tensor(a1 + a2).float() / 100)
    assert tok.bos_token_id not in r.completion_ids[0, len(a1):len(a1) + len(o1)].tolist()  # no BOS inside
    assert env.actions == ["12+7=", "19-3=16"]  # the stop string included, EOS left out
    assert r.finish_reason == ["stop"] and r.extras["turn_rewards"] == [[1.0, 2.0]]
    assert r.extras["turn_spans"] == [[(0, len(a1)), (len(a1) + len(o1), n)]]
    assert r.extras["observation_tokens"] == [len(o1)] and r.num_generated_tokens == len(a1) + len(a2)
    # turn 2's context is the prompt, then exactly the ids of turn 1 and the observation
    assert engine.calls[1][0][0] == tok("12+7-3=")["input_ids"] + a1 + o1
    assert tok.convert_tokens_to_ids("=") in engine.calls[0][2].token_ids  # one-token stop string: a stop id


def test_limits_max_turns_and_the_token_budget(tiny):
    _, tok = tiny
    a = _ids(tok, "1=")
    r = run_episodes(ScriptedEngine(tok, [a] * 3), tok, [ScriptedEnv(done_after=None, later_stop=("=",))], ["p"], [0],
                     SamplingParams(max_new_tokens=8), EpisodeLimits(max_turns=3, max_total_tokens=64))
    assert r.finish_reason == ["max_turns"] and r.extras["turns"] == [3]
    assert r.loss_mask[0].sum() == 3 * len(a)
    for budget in range(1, 12):  # the budget is never passed, whatever it is
        env = ScriptedEnv(done_after=None, later_stop=("=",))
        r = run_episodes(ScriptedEngine(tok, [a] * 10), tok, [env], ["p"], [0], SamplingParams(max_new_tokens=8),
                         EpisodeLimits(max_turns=10, max_total_tokens=budget))
        assert int(r.completion_mask.sum()) <= budget and r.finish_reason == ["length"], budget
    # a turn that reaches its token cap without a stop ends the episode (length)
    r = run_episodes(ScriptedEngine(tok, [_ids(tok, "123456")]), tok, [ScriptedEnv()], ["p"], [0],
                     SamplingParams(max_new_tokens=4), EpisodeLimits(4, 64))
    assert r.finish_reason == ["length"] and r.extras["turns"] == [1] and r.loss_mask is r.completion_mask


def test_an_episode_never_passes_the_models_context(tiny):
    """The model's positions bound an episode as the token budget does: prompt + completion stay within
    max_position_embeddings (the episode ends at length), and a prompt that fills the context is an error."""
    from types import SimpleNamespace

    _, tok = tiny
    a = _ids(tok, "1=")
    prompt = "12+34="
    P = len(tok(prompt)["input_ids"])
    for context in range(P + 1, P + 12):
        engine = ScriptedEngine(tok, [a] * 10)
        engine.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))
        r = run_episodes(engine, tok, [ScriptedEnv(done_after=None, later_stop=("=",))], [prompt], [0],
                         SamplingParams(max_new_tokens=8), EpisodeLimits(max_turns=10, max_total_tokens=64))
        assert P + int(r.completion_mask.sum()) <= context and r.finish_reason == ["length"], context
    engine.model.config.max_position_embeddings = P
    with pytest.raises(ValueError, match="whole context"):
        run_episodes(engine, tok, [ScriptedEnv()], [prompt], [0], SamplingParams(max_new_tokens=8), EpisodeLimits())


def test_sampled_ids_are_never_re_tokenized(stand_in):
    """A byte-level BPE (the Qwen3 stand-in's) merges "12" into one token; a policy that sampled "1" then "2"
    keeps those two ids, where decoding and encoding again would give one."""
    _, tok = load_model_and_tokenizer(stand_in("qwen3_instruct"))
    one, two = _ids(tok, "1"), _ids(tok, "2")
    assert len(_ids(tok, "12")) == 1 and one + two != _ids(tok, "12")
    eq = _ids(tok, "=")
    engine = ScriptedEngine(tok, [one + two + eq, one + two + [tok.eos_token_id]])
    r = run_episodes(engine, tok, [ScriptedEnv(done_after=2)], ["What is 12?"], [0], SamplingParams(max_new_tokens=8),
                     EpisodeLimits(4, 64))
    obs = _ids(tok, "o1;")
    assert r.completion_ids[0, : 3 + len(obs) + 3].tolist() == one + two + eq + obs + one + two + [tok.eos_token_id]
    assert engine.calls[1][0][0][-(3 + len(obs)):] == one + two + eq + obs  # the next turn saw the same ids


class EveryTokenEnv:
    """Ends every turn after one token (every printable character is a stop string), answers ``"ab;"``."""

    def __init__(self, turns: int):
        self.stop = tuple(chr(c) for c in range(32, 127))
        self.turns, self.k = turns, 0

    def reset(self, problem, seed):
        return problem

    def step(self, action):
        self.k += 1
        return EnvStep(observation="ab;", reward=1.0, done=self.k >= self.turns)

    def close(self):
        pass


@pytest.mark.parametrize("engine_cls", [LeanRolloutEngine, HFRolloutEngine])
def test_one_forward_over_the_episode_reproduces_the_engine_log_probs(tiny, engine_cls):
    model, tok = tiny
    engine = engine_cls(model, tok)
    envs = [EveryTokenEnv(turns=3 + b) for b in range(4)]
    r = run_episodes(engine, tok, envs, ["12+7=", "3-4=", "5*6=", "hello="], [0] * 4,
                     SamplingParams(temperature=1.0, max_new_tokens=4, seed=5), EpisodeLimits(6, 40))
    assert r.loss_mask is not None and (r.loss_mask.sum(-1) >= 1).all()
    assert any(o > 0 for o in r.extras["observation_tokens"])
    with torch.no_grad():
        logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    logp = token_logprobs(logits.float(), r.completion_ids)
    m = r.loss_mask.bool()
    assert torch.allclose(logp[m], r.rollout_logp[m], atol=1e-4), (logp[m] - r.rollout_logp[m]).abs().max()


class AnswerEnv:
    """One turn, no observation: the task's verifier is the reward (a single-turn task as an environment)."""

    def __init__(self, task):
        self.task, self.stop = task, ()

    def reset(self, problem, seed):
        self.problem = problem
        return problem.prompt

    def step(self, action):
        return EnvStep(reward=self.task.score(self.problem, action)["reward"], done=True)

    def close(self):
        pass


@pytest.mark.parametrize("engine_cls", [LeanRolloutEngine, HFRolloutEngine])
def test_one_turn_without_observations_is_the_single_turn_rollout_bit_for_bit(tiny, engine_cls):
    import copy

    from rlvr.config import load_config
    from rlvr.experience.batch import Experience
    from rlvr.tasks import make_task
    from rlvr.train.learner import Learner

    model, tok = tiny
    task = make_task("arithmetic", num_train=50, num_eval=10)
    problems = task.problems("train")[:3]
    params = SamplingParams(temperature=1.0, max_new_tokens=6, n=4, seed=11)
    single = engine_cls(model, tok).generate([p.prompt for p in problems], params)
    rows = [p for p in problems for _ in range(4)]
    multi = run_episodes(engine_cls(model, tok), tok, [AnswerEnv(task) for _ in rows], rows, [0] * len(rows), params,
                         EpisodeLimits(max_turns=1, max_total_tokens=6), group_size=4)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "rollout_logp", "versions"):
        assert torch.equal(getattr(single, name), getattr(multi, name)), name
    assert multi.loss_mask is multi.completion_mask
    assert single.texts == multi.texts and single.finish_reason == multi.finish_reason
    rewards = torch.tensor([sum(r) for r in multi.extras["turn_rewards"]])
    assert torch.equal(rewards, torch.tensor([task.score(p, t)["reward"] for p, t in zip(rows, single.texts)]))
    # and the learner's step on either is the same step (rewards with a spread in every group, so it moves)
    cfg = load_config("configs/grpo_arithmetic_tiny.yaml", ["trainer.micro_batch_size=4", "trainer.num_minibatches=1"])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0] * 3)
    states = []
    for r in (single, multi):
        m = copy.deepcopy(model)
        r.prompt_index = torch.arange(3).repeat_interleave(4)
        exp = Experience(rollout=r, rewards=rewards, reward_components={"reward": rewards, "correct": rewards},
                         group=r.prompt_index.clone(), problems=rows)
        Learner(m, cfg).update(exp, 0)
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], v) for k, v in model.state_dict().items())


class SlowEnv:
    """Each step sleeps ``delay`` seconds, then answers ``"ab;"``; done after ``turns`` turns."""

    def __init__(self, delay: float, turns: int = 2):
        self.stop, self.delay, self.turns, self.k = ("=",), delay, turns, 0

    def reset(self, problem, seed):
        return problem

    def step(self, action):
        import time

        time.sleep(self.delay)
        self.k += 1
        return EnvStep(observation="ab;", reward=1.0, done=self.k >= self.turns)

    def close(self):
        pass


def test_a_step_past_its_timeout_ends_the_episode_and_is_counted(tiny):
    import time

    _, tok = tiny
    a = _ids(tok, "1=")
    envs = [SlowEnv(0.0), SlowEnv(3.0), SlowEnv(0.0)]
    t0 = time.monotonic()
    r = run_episodes(ScriptedEngine(tok, [a] * 4), tok, envs, ["p", "q", "r"], [0] * 3, SamplingParams(max_new_tokens=4),
                     EpisodeLimits(max_turns=4, max_total_tokens=64, env_workers=4, step_timeout_s=0.3))
    assert time.monotonic() - t0 < 2.5  # nobody waited for the 3-second step
    assert r.finish_reason == ["stop", "timeout", "stop"] and r.extras["timeouts"] == [0, 1, 0]
    assert r.extras["turn_rewards"][1] == [0.0] and r.extras["turns"] == [2, 1, 2]


@pytest.mark.parametrize("interleave", [False, True])
def test_lockstep_and_interleaved_episodes_have_the_same_structure(tiny, interleave):
    _, tok = tiny
    a = _ids(tok, "1=")
    envs = [SlowEnv(d, turns=3) for d in (0.05, 0.0, 0.02, 0.0)]
    r = run_episodes(ScriptedEngine(tok, [a] * 12), tok, envs, ["p"] * 4, [0] * 4, SamplingParams(max_new_tokens=4),
                     EpisodeLimits(max_turns=4, max_total_tokens=64, env_workers=4, interleave=interleave))
    obs = _ids(tok, "ab;")
    assert r.finish_reason == ["stop"] * 4 and r.extras["turns"] == [3] * 4
    assert r.completion_ids[0].tolist() == a + obs + a + obs + a
    assert r.loss_mask[0].tolist() == [1] * len(a) + [0] * len(obs) + [1] * len(a) + [0] * len(obs) + [1] * len(a)


class EqualsEnv:
    """Turns end at ``=``; answers ``" ok"`` (a word the BPE tokenizer merges); done after ``turns`` turns."""

    def __init__(self, turns: int):
        self.stop, self.turns, self.k = ("=",), turns, 0

    def reset(self, problem, seed):
        return problem

    def step(self, action):
        self.k += 1
        return EnvStep(observation=" ok", reward=1.0, done=self.k >= self.turns)

    def close(self):
        pass


class ChatEqualsEnv(EqualsEnv):
    """:class:`EqualsEnv` for a chat model: the prompt and the observations are chat messages (rendered by the
    template: the seam between turns holds <|im_end|>, <|im_start|>user ... <|im_start|>assistant)."""

    def reset(self, problem, seed):
        return [{"role": "user", "content": problem}]

    def step(self, action):
        out = super().step(action)
        out.observation = [{"role": "user", "content": "ok"}]
        return out


@pytest.mark.parametrize("engine_cls", [LeanRolloutEngine, HFRolloutEngine])
def test_on_the_qwen3_stand_in_chat_seams_reproduce_the_episode_log_probs(stand_in, engine_cls):
    """As below, with the chat template's seams between turns: the forward over the episode (special tokens in
    the observations, outside the loss) still gives the engine's log-probs on every sampled token, and no
    warning is raised (nothing was appended raw)."""
    import warnings

    model, tok = load_model_and_tokenizer(stand_in("qwen3_instruct"))
    (eq,) = _ids(tok, "=")
    model.lm_head.register_forward_hook(lambda m, a, out: out + 8.0 * torch.nn.functional.one_hot(
        torch.tensor(eq), out.shape[-1]).to(out.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = run_episodes(engine_cls(model, tok), tok, [ChatEqualsEnv(3), ChatEqualsEnv(3)],
                         ["What is 12+7?", "What is 3-4?"], [0, 0],
                         SamplingParams(temperature=1.0, max_new_tokens=8, seed=3), EpisodeLimits(4, 96))
    start = _ids(tok, "<|im_start|>")[0]
    assert any(start in row[m == 0].tolist() for row, m in zip(r.completion_ids, r.loss_mask)), r.finish_reason
    assert not any(start in row[m == 1].tolist() for row, m in zip(r.completion_ids, r.loss_mask))
    with torch.no_grad():
        logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    logp = token_logprobs(logits.float(), r.completion_ids)
    m = r.loss_mask.bool()
    assert torch.allclose(logp[m], r.rollout_logp[m], atol=1e-4), (logp[m] - r.rollout_logp[m]).abs().max()


@pytest.mark.parametrize("engine_cls", [LeanRolloutEngine, HFRolloutEngine])
def test_on_the_qwen3_stand_in_one_forward_reproduces_the_episode_log_probs(stand_in, engine_cls):
    """A real architecture (q/k norms, untied head), a byte-level BPE and a chat template: the episode's ids and
    log-probs on the loss mask are what one forward over them gives. The head is biased towards "=" so the random
    model ends its turns there (the bias is part of the model: both the engine and the forward see it)."""
    import warnings

    model, tok = load_model_and_tokenizer(stand_in("qwen3_instruct"))
    (eq,) = _ids(tok, "=")
    model.lm_head.register_forward_hook(lambda m, a, out: out + 8.0 * torch.nn.functional.one_hot(
        torch.tensor(eq), out.shape[-1]).to(out.dtype))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is 12+7?", "What is 3-4?")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_episodes(engine_cls(model, tok), tok, [EqualsEnv(3), EqualsEnv(3)], prompts, [0, 0],
                         SamplingParams(temperature=1.0, max_new_tokens=8, seed=3), EpisodeLimits(4, 64))
    assert any("chat template" in str(w.message) for w in caught)  # the missing chat seam is said, not silent
    assert any(o > 0 for o in r.extras["observation_tokens"]), r.finish_reason
    with torch.no_grad():
        logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    logp = token_logprobs(logits.float(), r.completion_ids)
    m = r.loss_mask.bool()
    assert torch.allclose(logp[m], r.rollout_logp[m], atol=1e-4), (logp[m] - r.rollout_logp[m]).abs().max()
