"""Critics: GAE oracle, AsyPPO shards and masks, value models, PPO/AsyPPO runs and resume."""

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from rlvr import algorithms as A
from rlvr.config import ConfigError
from rlvr.models.tiny import save_tiny
from rlvr.models.value import build_value_model, completion_values, load_value_model
from rlvr.train.critic import explained_variance, shard_responses

D = torch.float64


@pytest.mark.parametrize("gamma,lam", list(itertools.product([1.0, 0.95], [1.0, 0.95])))
def test_gae_equals_the_unrolled_sum_of_discounted_td_errors(gamma, lam):
    """Oracle: A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V_T = 0."""
    g = torch.Generator().manual_seed(3)
    lengths = [5, 3, 1]
    B, T = len(lengths), max(lengths)
    v = torch.randn(B, T, generator=g, dtype=D)
    r = torch.randn(B, T, generator=g, dtype=D)
    mask = torch.zeros(B, T, dtype=D)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = A.compute_advantages("gae", token_rewards=r * mask, values=v, mask=mask, gamma=gamma, lam=lam,
                                    whiten=False)
    for i, n in enumerate(lengths):
        vals = [float(v[i, t]) for t in range(n)] + [0.0]
        delta = [float(r[i, t]) + gamma * vals[t + 1] - vals[t] for t in range(n)]
        for t in range(n):
            expect = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
            assert adv[i, t].item() == pytest.approx(expect, abs=1e-10)
            assert ret[i, t].item() == pytest.approx(expect + vals[t], abs=1e-10)
        assert torch.all(adv[i, n:] == 0)


def test_asyppo_masks_break_ties_by_position_and_skip_masked_tokens():
    values = torch.zeros(2, 2, 4, dtype=D)  # sigma = 0 everywhere: every valid token ties
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=D)  # N = 6 valid tokens
    adv_mask, ent_mask = A.asyppo_masks(values, mask, adv_mask_frac=0.34, ent_mask_frac=0.5)
    # lowest floor(0.34 * 6) = 2 in flat order: (0,0), (0,1); highest floor(0.5 * 6) = 3: the last three
    assert adv_mask.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]
    assert ent_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]


@pytest.mark.parametrize("sizes,M", [([8, 8], 2), ([5, 3, 1], 2), ([6, 6, 6], 3), ([4], 1)])
def test_shards_are_disjoint_cover_every_row_and_split_every_group(sizes, M):
    group = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])
    group = group[torch.randperm(len(group), generator=torch.Generator().manual_seed(0))]  # non-contiguous
    shards = shard_responses(group, M, torch.Generator().manual_seed(1))
    rows = torch.cat(shards)
    assert sorted(rows.tolist()) == list(range(len(group)))  # coverage, no duplicates
    for g, n in enumerate(sizes):
        per_shard = [int((group[s] == g).sum()) for s in shards]
        assert sum(per_shard) == n and max(per_shard) - min(per_shard) <= 1


def test_explained_variance():
    ret = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.ones(2, 2)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 0.5), ret, mask) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def test_mini_critic_keeps_pretrained_layers_and_round_trips(tiny_path, tmp_path):
    from transformers import AutoModelForCausalLM

    actor = AutoModelForCausalLM.from_pretrained(tiny_path)
    critic = build_value_model(tiny_path, num_outputs=1, num_layers=2)
    assert critic.config.num_hidden_layers == 2 and len(critic.model.layers) == 2
    torch.testing.assert_close(critic.model.layers[1].mlp.up_proj.weight, actor.model.layers[1].mlp.up_proj.weight)
    assert torch.all(critic.score.weight == 0)  # the head starts at V = 0
    narrow = build_value_model(tiny_path, num_outputs=51, hidden_size=64)
    assert narrow.config.hidden_size == 64 and narrow.score.out_features == 51
    critic.score.weight.data.normal_()
    critic.save_pretrained(tmp_path / "c")
    again = load_value_model(tmp_path / "c")
    ids = torch.randint(4, 100, (2, 3))
    ones = torch.ones(2, 3, dtype=torch.long)
    v1 = completion_values(critic.eval(), ids, ones, ids, ones)
    v2 = completion_values(again.eval(), ids, ones, ids, ones)
    assert v1.shape == (2, 3, 1)
    torch.testing.assert_close(v1, v2)


def _critic_fit(tiny_path, value_loss, params):
    """A critic regressing a fixed return for a few steps: its loss must fall."""
    torch.manual_seed(0)
    model = build_value_model(tiny_path, num_outputs=params.get("num_bins", 1), num_layers=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(4, 100, (4, 5))
    ones = torch.ones(4, 5, dtype=torch.long)
    returns = torch.tensor([0.0, 1.0, 0.0, 1.0]).unsqueeze(-1).expand(4, 5)
    losses = []
    for _ in range(30):
        out = completion_values(model, ids, ones, ids, ones)
        pred = out[..., 0] if value_loss == "mse" else out
        loss, _ = A.value_loss(value_loss, values=pred, old_values=pred.detach(), returns=returns,
                               mask=ones.float(), **params)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, out


@pytest.mark.parametrize("value_loss,params", [("mse", {"cliprange_value": None}),
                                               ("hl_gauss", {"num_bins": 21, "v_min": -0.5, "v_max": 1.5}),
                                               ("two_hot", {"num_bins": 21, "v_min": -0.5, "v_max": 1.5})])
def test_every_value_loss_fits_a_return(tiny_path, value_loss, params):
    losses, out = _critic_fit(tiny_path, value_loss, params)
    assert losses[-1] < 0.5 * losses[0]
    if value_loss != "mse":  # the read-out is the histogram's expectation
        v = A.hl_gauss_value(out.detach(), params["v_min"], params["v_max"])
        assert abs(float(v[1].mean()) - 1.0) < 0.25 and abs(float(v[0].mean())) < 0.25


def test_config_rejects_an_ensemble_without_asyppo(fast_config):
    with pytest.raises(ConfigError, match="critic.num_critics"):
        fast_config("critic.num_critics=2")
    with pytest.raises(ConfigError, match="critic.value_loss"):
        fast_config("critic.value_loss=huber")


@pytest.mark.slow
@pytest.mark.parametrize("recipe,extra", [
    ("configs/ppo_arithmetic_tiny.yaml", ["critic.value_loss=hl_gauss", "critic.value_loss_params={}"]),
    ("configs/asyppo_arithmetic_tiny.yaml", []),
])
def test_resume_restores_critics_and_their_optimizers(tmp_path, fast_overrides, recipe, extra):
    from rlvr.config import load_config
    from rlvr.train.loop import train

    base = fast_overrides + [f"run.output_dir={tmp_path}", "trainer.steps=4", "logging.checkpoint_every=2",
                             "critic.warmup_steps=1", *extra]
    straight = train(load_config(recipe, base + ["run.name=straight"]), log=lambda *_: None).run_dir
    assert train(load_config(recipe, base + ["run.name=cut"]), stop_after=2, log=lambda *_: None) is None
    resumed = train(resume=tmp_path / "cut", log=lambda *_: None).run_dir
    last = "checkpoints/step_000004"
    M = 2 if "asyppo" in recipe else 1
    for sub in ["model.safetensors"] + [f"critic_{m}/model.safetensors" for m in range(M)]:
        a, b = load_file(str(straight / last / sub)), load_file(str(resumed / last / sub))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{sub}:{k}")
    sa = torch.load(straight / last / "trainer_state.pt", weights_only=False)["learner"]["critics"]
    sb = torch.load(resumed / last / "trainer_state.pt", weights_only=False)["learner"]["critics"]
    assert len(sa["optimizers"]) == M
    for oa, ob in zip(sa["optimizers"], sb["optimizers"]):
        for k in oa["state"]:
            torch.testing.assert_close(oa["state"][k]["exp_avg"], ob["state"][k]["exp_avg"], rtol=0, atol=0)
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "critic/value_loss" in r]
    assert steps[0]["policy_version"] == 0  # critic warm-up: the actor is frozen on step 1
    assert steps[-1]["policy_version"] == 3
    if M == 2:
        assert "critic/disagreement" in steps[0] and "asyppo/adv_masked_frac" in steps[0]
