"""Fused / foreach AdamW and length-sorted micro-batches (issue 14.7): the same results as the
reference paths up to float reassociation."""

import copy

import pytest
import torch

from rlvr.optim import adamw_kwargs, make_optimizer
from rlvr.train.batches import micro_batches, sort_groups_by_length


def _steps(model, impl, n=5, seed=0):
    model = copy.deepcopy(model)
    opt, sched = make_optimizer(model, 1e-2, 0.1, (0.9, 0.999), warmup_steps=2, impl=impl)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        x = torch.randn(8, 16, generator=g)
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), opt


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def test_auto_picks_fused_on_cpu_and_every_impl_gives_the_same_update(net):
    params = list(net.parameters())
    assert adamw_kwargs(params, "auto") == {"fused": True}  # torch 2.13 has a CPU fused AdamW
    assert adamw_kwargs(params, "for-loop") == {"foreach": False}
    ref, _ = _steps(net, "for-loop")
    start = torch.cat([p.detach().flatten() for p in net.parameters()])
    for impl in ("fused", "foreach", "auto"):
        got, opt = _steps(net, impl)
        assert (got - ref).abs().max() <= 1e-6 * max(1.0, float(ref.abs().max())), impl
        assert (got - start).abs().max() > 1e-3
    assert opt.param_groups[0]["fused"] is True


def test_a_fused_optimizer_state_round_trips_through_a_for_loop_checkpoint(net):
    """Resuming a checkpoint written by another implementation works (the state dicts are the same)."""
    _, opt = _steps(net, "for-loop", n=2)
    model = copy.deepcopy(net)
    fused, _ = make_optimizer(model, 1e-2, 0.1, (0.9, 0.999), warmup_steps=2, impl="fused")
    fused.load_state_dict(opt.state_dict())
    model(torch.randn(2, 16)).sum().backward()
    fused.step()


def test_groups_sorted_by_length_cover_every_row_once():
    prompt_mask = torch.tensor([[0, 1, 1]] * 4 + [[1, 1, 1]] * 2)
    completion_mask = torch.tensor([[1, 1, 1, 1]] * 2 + [[1, 0, 0, 0]] * 2 + [[1, 1, 0, 0]] * 2)
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]
    ordered = sort_groups_by_length(groups, prompt_mask, completion_mask)
    assert [g.tolist() for g in ordered] == [[2, 3], [4, 5], [0, 1]]  # lengths 3, 5, 6
    chunks = list(micro_batches(ordered, 4))
    assert [c.tolist() for c in chunks] == [[2, 3, 4, 5], [0, 1]]


@pytest.mark.parametrize("shared", ["never", "always"])
def test_sorted_micro_batches_give_the_unsorted_update(fast_config, shared, tmp_path):
    """One update with length-sorted (and trimmed) micro-batches of 2 groups equals the unsorted one
    and the one-micro-batch one, up to float reassociation."""
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.rollout.base import Rollout
    from rlvr.experience.batch import Experience
    from rlvr.train.learner import Learner

    base, tok = load_model_and_tokenizer(save_tiny(tmp_path / "tiny", seed=1, hidden_size=64, intermediate_size=128,
                                                   num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=4))
    g = torch.Generator().manual_seed(0)
    prompts = [str(i) * (1 + 3 * i) + "=" for i in range(6)]  # lengths 2..17
    enc = tok([p for p in prompts for _ in range(3)], return_tensors="pt", padding=True, padding_side="left")
    B = enc["input_ids"].shape[0]
    lengths = torch.tensor([1 + (i // 3) * 2 % 9 for i in range(B)])
    T = int(lengths.max())
    c_ids = torch.randint(4, len(tok), (B, T), generator=g)
    c_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    group = torch.arange(B) // 3
    rollout = Rollout(prompt_ids=enc["input_ids"], prompt_mask=enc["attention_mask"], completion_ids=c_ids,
                      completion_mask=c_mask, rollout_logp=torch.zeros(B, T), finish_reason=["stop"] * B,
                      prompt_index=group, texts=[""] * B, policy_version=0)
    exp = Experience(rollout=rollout, rewards=(torch.arange(B) % 2).float(), reward_components={}, group=group,
                     problems=[None] * B)
    grads = {}
    for name, extra in {"one": ["trainer.micro_batch_size=64"],
                        "unsorted": ["trainer.micro_batch_size=6", "trainer.sort_by_length=false"],
                        "sorted": ["trainer.micro_batch_size=6", "trainer.sort_by_length=true"]}.items():
        cfg = fast_config("trainer.num_minibatches=1", "trainer.max_grad_norm=1e9", "trainer.old_logp=recompute",
                          f"trainer.shared_prefix={shared}", "trainer.entropy_coef=0.01", *extra)
        model = copy.deepcopy(base)
        Learner(model, cfg).update(exp, step=0)
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = grads["one"]
    assert ref.abs().max() > 1e-4
    for name in ("unsorted", "sorted"):
        assert torch.allclose(grads[name], ref, atol=1e-7, rtol=1e-5), name
