"""Trust-GRPO (trust-weighted auxiliary rewards) and ARM / ProGRPO advantage re-weighting (issue 13,
items 1 and 4): each against an independent computation (a transcription of the authors' per-group
loop, hand examples, brute-force sorting, and an unpadded per-row forward pass)."""

import math
from types import SimpleNamespace

import pytest
import torch

from rlvr import algorithms as A


# ----------------------------------------------------------------------------------- Trust-GRPO


def _release_reward(answer, process, steps, T=500.0, alpha=0.3):
    """The authors' CustomRewardManager.__call__ (n > 0 branch, SophiaVL-R1 commit 4fd36a8), for ONE
    group, with the process score given for every response (aux_min_outcome=None)."""
    answer, process = list(answer), list(process)
    if all(a >= 0.9 for a in answer) or all(a <= 0.1 for a in answer):
        process = [0.0] * len(answer)
        discount = 0.0
    else:
        correct = [a >= 0.5 for a in answer]
        c = [p for p, k in zip(process, correct) if k]
        w = [p for p, k in zip(process, correct) if not k]
        c_avg = sum(c) / len(c) if c else 0.0
        w_avg = sum(w) / len(w) if w else 0.0
        discount = math.exp(-steps / T) * alpha
        if c_avg < w_avg and c:
            discount *= math.exp(c_avg - w_avg)
    return [a + discount * p for a, p in zip(answer, process)]


def test_trust_weights_hand_example():
    # group 0: the auxiliary reward prefers wrong answers (mu_c = 0.3 < mu_w = 0.8): gamma = exp(-0.5)
    # group 1: it prefers right answers: gamma = 1;  group 2: all correct (saturated): gamma = 0
    outcome = torch.tensor([1., 1., 0., 0., 1., 0., 0., 0., 1., 1.])
    aux = torch.tensor([.2, .4, .9, .7, .9, .1, .3, .2, .5, .5])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    g = A.trust_weights(outcome, aux, group)
    want = torch.tensor([math.exp(-0.5)] * 4 + [1.0] * 4 + [0.0] * 2)
    assert torch.allclose(g, want.to(g.dtype))


@pytest.mark.parametrize("step", [0, 137, 1000])
def test_trust_grpo_matches_the_release_loop(step):
    gen = torch.Generator().manual_seed(step)
    G, n = 6, 12
    outcome = (torch.rand(n * G, generator=gen) < 0.5).double()
    outcome[:G] = 1.0  # one saturated group
    aux = torch.round(torch.rand(n * G, generator=gen, dtype=torch.float64) * 10) / 10  # the TRM's 0.1 grid
    group = torch.arange(n).repeat_interleave(G)
    r, eff = A.combine_rewards("trust_grpo", {"correct": outcome, "thinking": aux}, {"correct": 1.0, "thinking": 0.3},
                               group, step=step)
    want = torch.tensor([x for j in range(n)
                         for x in _release_reward(outcome[j * G:(j + 1) * G].tolist(), aux[j * G:(j + 1) * G].tolist(),
                                                  step)], dtype=r.dtype)
    assert torch.allclose(r, want, atol=1e-6)
    assert torch.allclose(eff["correct"], torch.ones_like(r))
    assert torch.allclose(eff["thinking"] * aux.to(r.dtype), want - outcome.to(r.dtype), atol=1e-6)


def test_trust_grpo_release_gate_on_wrong_answers_makes_binary_outcomes_trusted():
    """With aux_min_outcome=0.2 (the release scores the thinking reward only for outcomes >= 0.2), a
    binary outcome leaves mu_w = 0 <= mu_c: gamma = 1 in every unsaturated group."""
    outcome = torch.tensor([1., 0., 0., 1.])
    aux = torch.tensor([.1, .9, .8, .2])
    r, eff = A.combine_rewards("trust", {"correct": outcome, "t": aux}, {"correct": 1.0, "t": 0.3},
                               torch.zeros(4, dtype=torch.long), aux_min_outcome=0.2)
    assert torch.allclose(r, outcome + 0.3 * torch.tensor([.1, 0., 0., .2]))
    with pytest.raises(ValueError, match="outcome component"):
        A.combine_rewards("trust_grpo", {"t": aux}, {"t": 1.0}, None)


# ------------------------------------------------------------------------------- ARM / ProGRPO


def test_low_prob_confidence_by_sorting():
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(5, 7, generator=gen, dtype=torch.float64) * 3
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [0, 1, 1, 0, 1, 1, 1], [0] * 7, [1] + [0] * 6])
    for q in (0.2, 0.5, 1.0):
        got = A.low_prob_confidence(logp, mask, q)
        for i in range(5):
            vals = sorted(logp[i, j].item() for j in range(7) if mask[i, j])
            if not vals:
                assert got[i] == 1.0
                continue
            k = max(1, math.ceil(q * len(vals)))
            assert got[i].item() == pytest.approx(math.exp(sum(vals[:k]) / k), rel=1e-12)


def test_arm_advantages_hand_example():
    adv = torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]])
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])  # group 1 is all-zero: left alone
    group = torch.tensor([0, 0, 1, 1])
    cq = torch.tensor([0.4, 0.4, 0.3, 0.3])
    co = torch.tensor([0.9, 0.1, 0.5, 0.5])
    out = A.arm_advantages(adv, rewards, group, cq, co, alpha=0.2)
    want = torch.tensor([[0.5 - 0.1, 0.5 - 0.1], [-0.5 + 0.06, -0.5 + 0.06], [0.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(out, want)
    assert torch.allclose(A.arm_advantages(adv[:, 0], rewards, group, cq, co, alpha=0.2), want[:, 0])


def test_arm_controller_confidences_equal_an_unpadded_forward():
    """The controller's one padded forward gives, per row, the log-probs of the prompt tokens (from the
    second on) and of the completion tokens that an unpadded forward of that row alone gives."""
    from rlvr.models.tiny import build_char_tokenizer, build_tiny_model
    from rlvr.control.controllers import AdvantageReweighting

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2).eval()
    prompts, completions = ["12+7=", "3-45=", "9+9="], ["19", "-42", "1"]
    P = max(len(tok(p)["input_ids"]) for p in prompts)
    T = max(len(c) for c in completions) + 1
    p_ids, p_mask, c_ids, c_mask, rows = [], [], [], [], []
    for p, c in zip(prompts, completions):
        pi = tok(p)["input_ids"]
        ci = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((pi, ci))
        p_ids.append([tok.pad_token_id] * (P - len(pi)) + pi)
        p_mask.append([0] * (P - len(pi)) + [1] * len(pi))
        c_ids.append(ci + [tok.pad_token_id] * (T - len(ci)))
        c_mask.append([1] * len(ci) + [0] * (T - len(ci)))
    rollout = SimpleNamespace(prompt_ids=torch.tensor(p_ids), prompt_mask=torch.tensor(p_mask),
                              completion_ids=torch.tensor(c_ids), completion_mask=torch.tensor(c_mask))
    exp = SimpleNamespace(rollout=rollout, rewards=torch.tensor([1.0, 0.0, 1.0]), group=torch.tensor([0, 0, 1]))
    learner = SimpleNamespace(model=model, config=SimpleNamespace(trainer=SimpleNamespace(micro_batch_size=2)))
    for q in (1.0, 0.5):
        ctl = AdvantageReweighting(SimpleNamespace(alpha=0.1, quantile=q))
        assert ctl.rewards(exp.rewards, exp, learner) is exp.rewards
        cq, co = ctl._conf
        for i, (pi, ci) in enumerate(rows):
            ids = torch.tensor([pi + ci])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1).gather(
                    -1, ids[0, 1:, None]).squeeze(-1)
            for got, vals in ((cq[i], lp[:len(pi) - 1]), (co[i], lp[len(pi) - 1:])):
                v = sorted(vals.tolist())
                k = max(1, math.ceil(q * len(v)))
                assert got.item() == pytest.approx(math.exp(sum(v[:k]) / k), rel=1e-4)
        mask = rollout.completion_mask.float()
        adv = torch.tensor([1.0, -1.0, 0.0])[:, None] * mask
        ctx = SimpleNamespace(mask=mask)
        out = ctl.advantages(adv, exp, ctx)
        assert torch.allclose(out, A.arm_advantages(adv, exp.rewards, exp.group, cq, co, 0.1) * mask)
        assert "arm/shift_abs_mean" in ctl.metrics()
