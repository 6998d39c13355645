"""Second wave in the trainer (issue 13): samplers, controllers and callbacks, checkpoints, 3-step runs."""

import json
import math

import pytest
import torch

from rlvr.config import ConfigError, load_config
from rlvr.experience.producer import PositiveNegativePairing, pair_roles

EASY = ["task.options={max_digits: 1, ops: '+', num_eval: 20}", "sft.steps=150", "sft.batch_size=32",
        "sft.lr=3.0e-3"]
NEW_RECIPES = ["gdpo", "dvao", "lagrangian", "prorl", "trl_grpo"]


# ------------------------------------------------------------------------------ prompt pairing


def test_pair_roles_frequencies_match_binomial_probabilities():
    """A group of G Bernoulli(p) outcomes is 'hard' with probability P(0 < K/G <= hard_max) and 'easy'
    with P(easy_min <= K/G < 1) (K ~ Binomial(G, p)): frequencies over many simulated groups."""
    G, n = 8, 20000
    g = torch.Generator().manual_seed(0)
    for p in (0.2, 0.5, 0.8):
        k = (torch.rand(n, G, generator=g) < p).sum(-1)
        roles = pair_roles(k.double() / G, hard_max=0.25, easy_min=0.75)

        def prob(pred):
            return sum(math.comb(G, j) * p ** j * (1 - p) ** (G - j) for j in range(G + 1) if pred(j / G))

        ph, pe = prob(lambda r: 0 < r <= 0.25), prob(lambda r: 0.75 <= r < 1)
        for role, want in ((1, ph), (-1, pe)):
            got = float((roles == role).double().mean())
            assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / n) + 1e-9, (p, role, got, want)


class _FakeRollout:
    def __init__(self, n):
        self.completion_mask = torch.ones(n, 2)


def test_pairing_collects_hard_easy_pairs():
    from rlvr.experience.batch import Experience
    from rlvr.rollout.base import Rollout

    rates = iter([[0.0, 0.25, 1.0, 0.5], [0.75, 0.25, 0.75, 0.0]])  # per round, per group (G = 4)

    def make(n):
        r = next(rates)
        correct = torch.tensor([float(i < round(4 * x)) for x in r for i in range(4)])
        b = len(correct)
        rollout = Rollout(prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
                          completion_ids=torch.zeros(b, 2, dtype=torch.long),
                          completion_mask=torch.ones(b, 2, dtype=torch.long), rollout_logp=torch.zeros(b, 2),
                          finish_reason=["stop"] * b, prompt_index=torch.arange(4).repeat_interleave(4),
                          texts=[""] * b, policy_version=0, num_generated_tokens=2 * b)
        return Experience(rollout=rollout, rewards=correct, reward_components={"correct": correct},
                          group=torch.arange(4).repeat_interleave(4), problems=[None] * b,
                          timings={"generate": 0.0, "score": 0.0})

    out = PositiveNegativePairing("correct", hard_max=0.5, easy_min=0.75, max_rounds=5).collect(make, 4, 0)
    assert out.extras["gen_rounds"] == 2
    assert out.extras["pair_role"].tolist() == [1] * 4 + [-1] * 4 + [1] * 4 + [-1] * 4
    rates_out = [float(out.rewards[out.group == gid].mean()) for gid in range(4)]
    assert rates_out == [0.25, 0.75, 0.5, 0.75]  # hard (0.25), easy (0.75), hard (0.5), easy (0.75)


# ------------------------------------------------------------------------------ config


def test_config_second_wave_errors_are_one_line():
    base = "configs/grpo_arithmetic_tiny.yaml"
    cases = [
        (["reward.combine=dvao"], "reward.combine = 'dvao' needs reward.weights"),
        (["reward.weights={correct: 1}", "reward.combine=dvao"], "set algorithm.advantage_estimator=identity"),
        (["kl.controller=adaptive"], "kl.placement is 'none'"),
        (["reward.combine=nope"], "unknown name 'nope'"),
        (["algorithm.token_weights={nope: {}}"], "algorithm.token_weights.nope is not a token weight"),
        (["algorithm.token_weights={opsm: {thresh: 1}}"], "algorithm.token_weights.opsm.thresh is not a parameter"),
        (["reward.constraints={format: {direction: '>'}}"], "reward.constraints.format"),
        (["rollout.pairing.enabled=true", "rollout.dynamic_sampling.enabled=true"], "enable one"),
    ]
    for overrides, needle in cases:
        with pytest.raises(ConfigError) as err:
            load_config(base, overrides)
        assert needle in str(err.value), (overrides, str(err.value))
        assert all(line.startswith("config error: ") for line in str(err.value).splitlines())


def test_advantage_level_combiner_resolves_the_identity_estimator():
    c = load_config(None, ["reward.weights={correct: 1.0, format: 0.5}", "reward.combine=gdpo"])
    assert c.algorithm.advantage_estimator == "identity"


# ------------------------------------------------------------------------------ training


def _run(tmp_path, fast_overrides, *extra, config="configs/grpo_arithmetic_tiny.yaml", steps=3, **kw):
    from rlvr.train.loop import train

    cfg = load_config(config, fast_overrides + EASY + [f"run.output_dir={tmp_path}", f"trainer.steps={steps}",
                                                        *extra])
    return train(cfg, log=lambda *_: None, **kw)


def _records(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl") if '"loss"' in line]


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_RECIPES)
def test_new_recipe_trains_three_steps(tmp_path, fast_overrides, name):
    res = _run(tmp_path, fast_overrides, config=f"configs/{name}_arithmetic_tiny.yaml")
    assert (res.run_dir / "checkpoints" / "step_000003").is_dir()
    recs = _records(res.run_dir)
    assert len(recs) == 3
    if name in ("gdpo", "dvao"):
        assert "reward/weight/correct" in recs[-1] and "reward/format" in recs[-1]
    if name == "lagrangian":
        assert "constraint/format/lambda" in recs[-1]


FEATURES = ["reward.weights={correct: 1.0}", "reward.constraints={format: {threshold: 0.99, lr: 0.5}}",
            "kl.placement=loss", "kl.coef=0.01", "kl.controller=adaptive", "kl.target=0.001", "kl.horizon=10",
            "kl.reset_every=2", "trainer.entropy_target=5.0", "algorithm.imentor.enabled=true",
            "algorithm.token_weights={steer: {}, top_entropy: {quantile: 0.5}}", "trainer.num_minibatches=1"]


@pytest.mark.slow
def test_controller_and_callback_state_survives_a_resume(tmp_path, fast_overrides):
    """Multipliers, the adaptive KL / entropy coefficients, the i-MENTOR predictor and the reset
    reference are checkpointed: an interrupted run resumed at step 2 logs step 3 as the uninterrupted one."""
    full = _records(_run(tmp_path / "a", fast_overrides, *FEATURES, "logging.checkpoint_every=2").run_dir)
    from rlvr.train.loop import train

    _run(tmp_path / "b", fast_overrides, *FEATURES, "logging.checkpoint_every=2", stop_after=2)
    run_dir = next((tmp_path / "b").iterdir())
    train(resume=run_dir, log=lambda *_: None)
    resumed = _records(run_dir)
    keys = ["constraint/format/lambda", "kl_coef", "entropy_coef", "imentor/scale", "ref_resets", "loss"]
    for k in keys:
        assert resumed[-1][k] == pytest.approx(full[-1][k], rel=1e-6, abs=1e-9), k
    assert full[1]["ref_reset"] == 1.0 and full[-1]["kl_coef"] != 0.01  # the controller moved


@pytest.mark.slow
def test_plasticity_and_regrama_run_as_callbacks(tmp_path, fast_overrides):
    recs = _records(_run(tmp_path, fast_overrides, "plasticity.every=1", "plasticity.regrama=true",
                         "plasticity.regrama_every=2", "plasticity.tau=0.5", steps=2).run_dir)
    assert 0 <= recs[0]["plasticity/grama_ratio"] <= 1 and "plasticity/dormant_ratio" in recs[0]
    assert recs[1]["plasticity/regrama_reset"] > 0
    assert any(k.endswith("/grama") and "layers.0" in k for k in recs[0])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["rollout.pairing.enabled=true", "rollout.pairing.hard_max=0.5", "rollout.pairing.easy_min=0.5",
     "rollout.pairing.max_rounds=50"],
    ["reward.weights={correct: 1.0, format: 0.5}", "reward.dynamic_weights=hypervolume",
     "algorithm.advantage_estimator=dr_grpo"],
    ["reward.weights={correct: 1.0, format: 0.5}", "reward.dynamic_weights=gradient"],
    ["reward.weights={correct: 1.0, format: 0.5}", "reward.combine=tmn", "algorithm.advantage_estimator=identity"],
    ["reward.weights={correct: 1.0, format: 0.5}", "reward.combine=pow3r"],
    ["algorithm.policy_loss=vespo"], ["algorithm.policy_loss=luspo", "algorithm.loss_agg_mode=seq-mean-token-sum"],
    ["algorithm.policy_loss_params={importance_sampling_level: sequence, log_ratio_clamp: null}"],
    ["algorithm.token_weights={opsm: {threshold: 0.5, behaviour: old}}"],
])
def test_more_second_wave_options_train(tmp_path, fast_overrides, extra):
    recs = _records(_run(tmp_path, fast_overrides, *extra, steps=2).run_dir)
    assert len(recs) == 2 and all(math.isfinite(r["loss"]) for r in recs)
