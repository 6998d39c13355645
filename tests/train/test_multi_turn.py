"""Multi-turn training (the env config section): a chain_oracle run trains end to end, logs its episodes, and
the learner gives no gradient to the environment's tokens."""

from __future__ import annotations

import json

import pytest
import torch

CHAIN = ["task.options={min_digits: 1, max_digits: 1, ops: '+-', num_operands: 3, num_train: 500, num_eval: 50}",
         "rollout.prompts_per_step=4", "rollout.group_size=4", "trainer.micro_batch_size=8",
         "trainer.num_minibatches=2", "sft.steps=10", "sft.batch_size=16", "sft.warmup_steps=2",
         "trainer.warmup_steps=0", "eval.num_problems=8", "eval.samples_per_problem=2", "logging.progress=false",
         "logging.plots=false", "logging.num_samples=2", "logging.samples_every=1"]


@pytest.mark.slow
def test_a_chain_oracle_run_trains_logs_its_episodes_and_rlvr_eval_plays_them(tmp_path, capsys):
    from rlvr.cli import main
    from rlvr.config import load_config
    from rlvr.train.loop import train

    cfg = load_config("configs/grpo_chain_oracle_tiny.yaml", [*CHAIN, "trainer.steps=2", f"run.output_dir={tmp_path}"])
    result = train(cfg, log=lambda *a: None)
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward_mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert 1 <= r["env/turns"] <= 2 and r["env/finish_stop"] + r["env/finish_length"] + r["env/finish_max_turns"] == 1
        assert "reward/env_reward" in r and r["env/policy_tokens"] > 0
    evals = [r for r in records if "eval/greedy_env_reward" in r]
    assert len(evals) == 2 and all(0 <= r["eval/sampled_env_reward"] <= 1 for r in evals)  # held-out episodes
    samples = [json.loads(x) for x in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    parts = samples[0]["samples"][0]["transcript"] if "samples" in samples[0] else samples[0]["transcript"]
    assert parts[0][0] == "policy" and all(role in ("policy", "env") for role, _ in parts)
    assert "".join(text for _, text in parts).replace("</s>", "") != ""

    # rlvr eval on its checkpoint plays episodes (the run's config names the environment); pass@k mode writes
    # each sample's transcript
    assert main(["eval", "--checkpoint", str(result.run_dir), "--json", "eval.num_problems=4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "greedy_env_reward" in out and "sampled_turns" in out
    assert main(["eval", "--checkpoint", str(result.run_dir), "--k", "1,2", "--out", str(tmp_path / "k"),
                 "eval.num_problems=4"]) == 0
    rows = [json.loads(x) for x in next((tmp_path / "k").rglob("samples.jsonl")).read_text().splitlines()]
    assert len(rows) == 4 and len(rows[0]["transcripts"]) == 2 and rows[0]["transcripts"][0][0][0] == "policy"


def test_observation_tokens_get_no_gradient(tmp_path):
    """The learner's loss reads the loss mask: the gradient of the loss with respect to every observation token's
    log-prob is exactly 0 (and not 0 on the policy's tokens). With the completion mask instead it would not be."""
    from rlvr.config import load_config
    from rlvr.experience.batch import Experience
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.episodes import EpisodeLimits, run_episodes
    from rlvr.rollout.lean import LeanRolloutEngine
    from rlvr.train.learner import Learner

    from tests.rollout.test_episodes import EveryTokenEnv

    model, tok = load_model_and_tokenizer(save_tiny(tmp_path / "tiny", seed=1))
    r = run_episodes(LeanRolloutEngine(model, tok), tok, [EveryTokenEnv(3) for _ in range(4)],
                     ["1+2="] * 2 + ["3-4="] * 2, [0] * 4, SamplingParams(temperature=1.0, max_new_tokens=4, seed=1),
                     EpisodeLimits(4, 32))
    r.prompt_index = torch.tensor([0, 0, 1, 1])
    assert ((r.completion_mask == 1) & (r.loss_mask == 0)).any()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    exp = Experience(rollout=r, rewards=rewards, reward_components={"reward": rewards, "correct": rewards},
                     group=r.prompt_index.clone(), problems=[None] * 4)
    grads = torch.zeros(r.completion_ids.shape)

    class Watched(Learner):
        def _forward_stats(self, model, exp, idx, policy=True):
            stats = super()._forward_stats(model, exp, idx, policy)
            if stats[0].requires_grad:  # the training forward: record d loss / d logp per token
                stats[0].register_hook(lambda g, idx=idx: grads.index_put_((idx,), g.detach(), accumulate=True))
            return stats

    cfg = load_config("configs/grpo_arithmetic_tiny.yaml", ["trainer.micro_batch_size=4", "trainer.num_minibatches=1",
                                                            "kl.placement=none", "trainer.entropy_coef=0"])
    Watched(model, cfg).update(exp, 0)
    observation = (r.completion_mask == 1) & (r.loss_mask == 0)
    assert (grads[observation] == 0).all()
    assert (grads[r.loss_mask == 1] != 0).any()


def test_turn_rewards_sit_on_their_turns_last_tokens_and_sum_to_the_row_reward():
    """GAE with gamma = lambda = 1 and zero values gives each token the rewards of the turns from its own on."""
    from rlvr import algorithms as A
    from rlvr.train.learner import rewards_on_tokens

    # row 0: turn 1 = tokens 0-1, observation 2-3, turn 2 = tokens 4-5; row 1: one turn of 3 tokens, then padding
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.float32)
    extras = {"turn_rewards": [[0.25, 1.0], [0.5]], "turn_spans": [[(0, 2), (4, 6)], [(0, 3)]]}
    rewards = torch.tensor([1.75, 0.5])  # row 0: its turns (1.25) and a verifier's 0.5 on top
    tok = rewards_on_tokens(rewards, mask, extras)
    assert tok.tolist() == [[0.0, 0.25, 0.0, 0.0, 0.0, 1.5], [0.0, 0.0, 0.5, 0.0, 0.0, 0.0]]
    assert torch.allclose(tok.sum(-1), rewards)
    adv, _ = A.compute_advantages("gae", rewards=rewards, token_rewards=tok, values=torch.zeros_like(mask),
                                  mask=mask, group=torch.tensor([0, 1]), gamma=1.0, lam=1.0, whiten=False)
    assert torch.allclose(adv[0][mask[0] > 0], torch.tensor([1.75, 1.75, 1.5, 1.5]))
    # a single-turn row (no extras) keeps the outcome on its last token
    assert rewards_on_tokens(rewards, mask, {}).tolist()[1] == [0.0, 0.0, 0.5, 0.0, 0.0, 0.0]


@pytest.mark.slow
def test_episodes_in_two_async_rollout_workers_stay_within_the_staleness_bound(tmp_path):
    from rlvr.config import load_config
    from rlvr.train.loop import train

    cfg = load_config("configs/grpo_chain_oracle_tiny.yaml", [
        *CHAIN, "trainer.steps=4", f"run.output_dir={tmp_path}", "runtime.mode=async", "runtime.num_rollout_workers=2",
        "runtime.max_staleness=1", "runtime.worker_threads=1", "runtime.learner_threads=1", "eval.num_problems=4"])
    result = train(cfg, log=lambda *a: None)
    steps = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in x]
    assert len(steps) == 4 and max(r["staleness_max"] for r in steps) <= 1
    assert all(r["env/turns"] >= 1 for r in steps)
