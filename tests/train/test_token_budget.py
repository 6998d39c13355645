"""trainer.max_tokens_per_microbatch (issue 30, item 4): micro-batches cut by a token budget of whole groups
(padded positions after trimming), run padded or as one packed sequence; an update equals the one-micro-batch
update on ragged batches (the tiny model and the Qwen3-shaped stand-in), and no forward runs more positions
than the budget."""

import copy

import pytest
import torch

from rlvr.train.batches import micro_batches, padded_tokens


def test_chunks_hold_whole_groups_within_the_budget():
    g = torch.Generator().manual_seed(0)
    B, G = 40, 4
    p_len = torch.randint(3, 9, (B,), generator=g)
    c_len = torch.randint(1, 30, (B,), generator=g)
    groups = [torch.arange(i, i + G) for i in range(0, B, G)]
    for budget in (50, 120, 400, 10_000):
        chunks = list(micro_batches(groups, 256, budget, p_len, c_len))
        assert torch.equal(torch.cat(chunks), torch.arange(B))  # every row once, in order
        for c in chunks:
            assert len(c) % G == 0  # whole groups
            assert padded_tokens(c, p_len, c_len) <= budget or len(c) == G, (budget, c)
        if budget == 10_000:
            assert len(chunks) == 1
    # no budget: rows only, as before
    assert [len(c) for c in micro_batches(groups, 12, 0, p_len, c_len)] == [12, 12, 12, 4]
    assert [len(c) for c in micro_batches(groups, 12)] == [12, 12, 12, 4]
    # the row limit still holds under a large budget
    assert max(len(c) for c in micro_batches(groups, 8, 10_000, p_len, c_len)) == 8


def _ragged(exp, tok):
    # ragged completions (a random model rarely stops): cut row i after 1 + 3i mod T tokens
    r = exp.rollout
    B, T = r.completion_ids.shape
    keep = torch.tensor([1 + (3 * i) % T for i in range(B)])
    mask = (torch.arange(T) < keep[:, None]).to(r.completion_mask.dtype)
    r.completion_ids = torch.where(mask.bool(), r.completion_ids, torch.full_like(r.completion_ids, tok.pad_token_id))
    r.completion_mask = r.loss_mask = mask  # single-turn: the loss mask is the completion mask
    return exp


@pytest.mark.parametrize("which", ["tiny", "qwen3_instruct"])
@pytest.mark.parametrize("packed", [False, True])
def test_an_update_under_a_token_budget_equals_one_micro_batch(which, packed, stand_in, fast_config, tmp_path,
                                                              arithmetic_experience):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.train.learner import Learner

    path = stand_in(which) if which != "tiny" else str(save_tiny(tmp_path / "tiny", seed=6))
    base, tok = load_model_and_tokenizer(path)
    exp = _ragged(arithmetic_experience(base, tok, n_prompts=6, max_new_tokens=8), tok)
    r = exp.rollout
    lengths = r.completion_mask.sum(-1)
    assert lengths.min() < lengths.max()  # ragged completions
    p_len, c_len = r.prompt_mask.sum(-1), r.completion_mask.sum(-1)
    budget = int(3 * (p_len.max() + c_len.max()))  # about one group of 3 rows a micro-batch
    over = ["trainer.max_grad_norm=1e9", "trainer.lr=1e-3", "trainer.num_minibatches=1", "trainer.entropy_coef=0.01",
            "trainer.shared_prefix=" + ("always" if packed else "never"), "trainer.pack_tokens=" + ("512" if packed else "0")]
    out = {}
    for setting in (0, budget):
        model = copy.deepcopy(base)
        learner = Learner(model, fast_config(f"trainer.max_tokens_per_microbatch={setting}", *over))
        seen, grads = [], {}
        hooks = [model.get_input_embeddings().register_forward_hook(
            lambda m, a, o: seen.append(o.shape[0] * o.shape[1]))]
        hooks += [p.register_hook(lambda g, n=n: grads.__setitem__(n, grads.get(n, 0) + g.detach().clone()))
                  for n, p in model.named_parameters() if p.requires_grad]
        metrics = learner.update(exp, step=0)
        for h in hooks:
            h.remove()
        out[setting] = (metrics, torch.cat([grads[n].flatten() for n in sorted(grads)]), seen)
    assert len(out[budget][2]) > len(out[0][2])  # more, smaller forwards
    assert max(out[budget][2]) <= budget < max(out[0][2])  # no forward ran more positions than the budget
    g0, g1 = out[0][1], out[budget][1]  # the gradient of the update (before AdamW), summed over micro-batches
    assert g0.norm() > 0 and float((g1 - g0).norm() / g0.norm()) < 1e-5
    assert float((g1 - g0).abs().max()) < 1e-6 * max(1.0, float(g0.abs().max()))
    for k in ("loss", "entropy", "grad_norm"):
        assert out[budget][0][k] == pytest.approx(out[0][0][k], rel=1e-5, abs=1e-7), k


def test_a_group_over_the_budget_runs_alone_and_says_so(caplog):
    p_len, c_len = torch.full((8,), 10), torch.full((8,), 30)
    groups = [torch.arange(0, 4), torch.arange(4, 8)]  # 4 rows x 40 = 160 positions a group
    with caplog.at_level("WARNING", logger="rlvr"):
        chunks = list(micro_batches(groups, 256, 100, p_len, c_len))
    assert [len(c) for c in chunks] == [4, 4]
    assert sum("max_tokens_per_microbatch=100 is below one group" in r.message for r in caplog.records) == 1
