"""Shared-prefix forward (issue 14.2): the same log-probs, values and gradients as the plain forward on
ragged batches (left-padded prompts, right-padded completions, interleaved groups), with and without
critics; models that cannot share fall back with a reason."""

import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForTokenClassification

from rlvr.models.logprobs import completion_logits, completion_outputs, token_logprobs
from rlvr.models.prefix import (PrefixSharing, has_active_dropout, prefix_groups, prefix_savings,
                                shared_prefix_outputs, shared_prefix_support)
from rlvr.models.tiny import build_char_tokenizer, build_tiny_model

ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model(tok, seed=3, **ARCH)


def ragged_batch(tok, seed=0):
    """Prompts of lengths 2..14 tokens (left-padded), G = 3, 1, 4, 2 completions of 1..7 tokens
    (right-padded, EOS inside), rows of the groups interleaved."""
    g = torch.Generator().manual_seed(seed)
    prompts = ["7", "12+345=", "hello world, 9*8=", "a-b"]
    sizes = [3, 1, 4, 2]
    rows = [(i, p) for i, (p, n) in enumerate(zip(prompts, sizes)) for _ in range(n)]
    order = torch.randperm(len(rows), generator=g).tolist()
    rows = [rows[i] for i in order]
    enc = tok([p for _, p in rows], return_tensors="pt", padding=True, padding_side="left")
    B = len(rows)
    lengths = torch.randint(1, 8, (B,), generator=g)
    lengths[0] = 7  # the widest row sets T
    T = int(lengths.max())
    c_ids = torch.randint(4, len(tok), (B, T), generator=g)
    c_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    c_ids = c_ids.masked_fill(c_mask == 0, tok.pad_token_id)
    return enc["input_ids"], enc["attention_mask"], c_ids, c_mask, torch.tensor([i for i, _ in rows])


def test_prefix_groups_find_the_distinct_prompts(tok):
    p_ids, p_mask, _, _, group = ragged_batch(tok)
    first, inverse = prefix_groups(p_ids, p_mask)
    assert first.shape[0] == 4
    assert torch.equal(p_ids[first][inverse], p_ids)
    # rows share an index exactly when they answer the same prompt
    assert all((inverse == inverse[i]).tolist() == (group == group[i]).tolist() for i in range(len(group)))


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_log_probs_and_gradients_equal_the_plain_forward(tok, model):
    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok, seed=1)
    m = c_mask.bool()
    w = torch.randn(c_ids.shape, generator=torch.Generator().manual_seed(5))
    out = {}
    for name in ("plain", "shared"):
        model.zero_grad(set_to_none=True)
        if name == "plain":  # the reference: the unchanged plain computation
            logits = completion_logits(model, p_ids, p_mask, c_ids, c_mask, temperature=0.7)
        else:
            logits = shared_prefix_outputs(model, p_ids, p_mask, c_ids, c_mask).float() / 0.7
        logp = token_logprobs(logits, c_ids)
        (logp * w * m).sum().backward()
        out[name] = (logp.detach(), _grads(model))
    (lp0, g0), (lp1, g1) = out["plain"], out["shared"]
    assert (lp0[m] - lp1[m]).abs().max() < 1e-5
    assert g0.abs().max() > 1e-3
    assert (g0 - g1).norm() / g0.norm() < 1e-5
    assert ((g0 - g1).abs() <= 1e-5 * g0.abs().max()).all()


def test_one_token_completions_and_one_column_prompts(tok, model):
    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok, seed=2)
    c_ids, c_mask = c_ids[:, :1], torch.ones_like(c_mask[:, :1])
    a = completion_outputs(model, p_ids, p_mask, c_ids, c_mask)
    b = shared_prefix_outputs(model, p_ids, p_mask, c_ids, c_mask)
    assert b.shape == a.shape and (a - b).abs().max() < 1e-5
    one = shared_prefix_outputs(model, p_ids[:, -1:], p_mask[:, -1:], c_ids, c_mask)  # nothing to share: plain
    assert torch.allclose(one, completion_outputs(model, p_ids[:, -1:], p_mask[:, -1:], c_ids, c_mask))


def test_critic_values_and_gradients_equal_the_plain_forward(tok):
    from rlvr.models.value import completion_values

    config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=1, **ARCH)
    torch.manual_seed(4)
    critic = LlamaForTokenClassification(config).eval()  # eval: the head's dropout off, so outputs compare
    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok, seed=3)
    m = c_mask.bool()
    out = {}
    for shared in (False, True):
        critic.zero_grad(set_to_none=True)
        v = completion_values(critic, p_ids, p_mask, c_ids, c_mask, shared_prefix=shared)[..., 0]
        (v * m).pow(2).sum().backward()
        out[shared] = (v.detach(), _grads(critic))
    (v0, g0), (v1, g1) = out[False], out[True]
    assert (v0[m] - v1[m]).abs().max() < 1e-5
    assert (g0 - g1).norm() / g0.norm() < 1e-5
    assert PrefixSharing("auto").use(critic, p_ids, p_mask, c_ids, c_mask)
    critic.train()  # the head's dropout acts on each row's own outputs: still shareable
    assert has_active_dropout(critic) and not has_active_dropout(critic, backbone_only=True)
    assert PrefixSharing("auto").use(critic, p_ids, p_mask, c_ids, c_mask)


def test_learner_with_a_critic_trains_the_same_with_and_without_sharing(fast_config, tmp_path):
    """PPO with a critic: one update with trainer.shared_prefix=always and =never gives the same actor and
    critic gradients (the critic's head dropout is set to 0 so both runs draw no noise)."""
    import copy

    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.train.critic import Critics
    from rlvr.experience.batch import Experience
    from rlvr.train.learner import Learner

    path = save_tiny(tmp_path / "tiny", seed=5, **ARCH)
    base, tok = load_model_and_tokenizer(path)
    p_ids, p_mask, c_ids, c_mask, group = ragged_batch(tok, seed=4)
    from rlvr.rollout.base import Rollout

    B = len(group)
    rollout = Rollout(prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids, completion_mask=c_mask,
                      rollout_logp=torch.zeros(c_ids.shape), finish_reason=["stop"] * B, prompt_index=group,
                      texts=[""] * B, policy_version=0)
    exp = Experience(rollout=rollout, rewards=torch.arange(B, dtype=torch.float32) % 2,
                     reward_components={}, group=group, problems=[None] * B)
    grads = {}
    for shared in (False, True):
        cfg = fast_config("algorithm.advantage_estimator=gae", "trainer.num_minibatches=1",
                          "trainer.micro_batch_size=4", f"trainer.shared_prefix={'always' if shared else 'never'}",
                          "trainer.max_grad_norm=1e9", "critic.max_grad_norm=1e9", "trainer.old_logp=recompute")
        critics = Critics.build(cfg, path)
        for c in critics.models:
            c.dropout.p = 0.0
        model = copy.deepcopy(base)
        learner = Learner(model, cfg, critics)
        learner.update(exp, step=0)
        grads[shared] = (_grads(model), _grads(critics.models[0]))
        assert (learner.prefix.used > 0) == shared and (critics.prefix.used > 0) == shared
    for a, b in zip(grads[False], grads[True]):
        assert a.abs().max() > 0
        assert (a - b).norm() / a.norm() < 1e-5


def test_unsupported_models_fall_back_with_a_reason(tok, model):
    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    wrapped = NoCache(model)
    assert "takes no KV cache" in shared_prefix_support(wrapped)
    assert shared_prefix_support(model) is None
    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok)
    notes = []
    auto = PrefixSharing("auto", log=notes.append)
    assert not auto.use(wrapped, p_ids, p_mask, c_ids, c_mask)
    assert notes and "takes no KV cache" in notes[0] and auto.reasons
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not PrefixSharing("always").use(wrapped, p_ids, p_mask, c_ids, c_mask)
    assert any("shared_prefix = always" in str(w.message) for w in caught)
    assert not PrefixSharing("never").use(model, p_ids, p_mask, c_ids, c_mask)
    assert PrefixSharing("always").use(model, p_ids, p_mask, c_ids, c_mask)


def test_a_wrong_shared_forward_is_caught_by_the_first_check(tok, model, monkeypatch):
    import rlvr.models.prefix as prefix

    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok)
    real = prefix.shared_prefix_outputs
    monkeypatch.setattr(prefix, "shared_prefix_outputs", lambda *a: real(*a) + 1.0)
    notes = []
    sharing = PrefixSharing("auto", log=notes.append)
    assert not sharing.use(model, p_ids, p_mask, c_ids, c_mask)
    assert "differ from the plain forward" in notes[0]


def test_auto_shares_only_when_it_saves_enough():
    # default workload: 32 prompts x 8, prompt ~12, completion ~4 columns
    assert prefix_savings(256, 32, 12, 4) > 0.5
    assert prefix_savings(8, 8, 12, 4) < 0.1  # no repeated prompt: nothing saved but one position
    assert prefix_savings(16, 2, 10, 200) < 0.25  # long completions: little to share


# ------------------------------------------------------------------ the packed layout (trainer.pack_tokens)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("seed", [1, 6])
def test_packed_log_probs_and_gradients_equal_the_plain_forward(tok, impl, seed):
    """One packed sequence (distinct prompts once, completions without padding, a 4D mask) gives the
    plain forward's log-probs (1e-5) and parameter gradients (1e-5 relative) on a ragged batch."""
    from rlvr.models.prefix import packed_length, packed_prefix_outputs

    model = build_tiny_model(tok, seed=3, **ARCH)
    model.config._attn_implementation = impl
    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok, seed=seed)
    m = c_mask.bool()
    w = torch.randn(c_ids.shape, generator=torch.Generator().manual_seed(5))
    out = {}
    for name in ("plain", "packed", "via_shared"):
        model.zero_grad(set_to_none=True)
        if name == "plain":
            logits = completion_logits(model, p_ids, p_mask, c_ids, c_mask, temperature=0.7)
        elif name == "packed":
            logits = packed_prefix_outputs(model, p_ids, p_mask, c_ids, c_mask).float() / 0.7
        else:  # shared_prefix_outputs picks the packed layout when the batch fits in pack_tokens
            logits = shared_prefix_outputs(model, p_ids, p_mask, c_ids, c_mask, pack_tokens=10_000).float() / 0.7
        logp = token_logprobs(logits, c_ids)
        (logp * w * m).sum().backward()
        out[name] = (logp.detach(), _grads(model))
    lp0, g0 = out["plain"]
    for name in ("packed", "via_shared"):
        lp1, g1 = out[name]
        assert (lp0[m] - lp1[m]).abs().max() < 1e-5, name
        assert g0.abs().max() > 1e-3
        assert (g0 - g1).norm() / g0.norm() < 1e-5, name
    assert packed_length(p_ids, p_mask, c_mask) < p_ids.shape[0] * (p_ids.shape[1] + c_ids.shape[1])


def test_packed_length_counts_distinct_prefixes_once(tok):
    from rlvr.models.prefix import packed_length

    p_ids, p_mask, c_ids, c_mask, group = ragged_batch(tok, seed=1)
    firsts = {int(g): i for i, g in reversed(list(enumerate(group.tolist())))}
    want = sum(int(p_mask[i, :-1].sum()) for i in firsts.values()) + int(c_mask.sum())
    assert packed_length(p_ids, p_mask, c_mask) == want


def test_packed_critic_values_equal_the_plain_forward(tok):
    """A model without ``logits_to_keep`` (a token-classification critic) packs too."""
    from rlvr.models.prefix import packed_prefix_outputs
    from rlvr.models.value import completion_values

    config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=1, **ARCH)
    torch.manual_seed(4)
    critic = LlamaForTokenClassification(config).eval()
    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok, seed=3)
    m = c_mask.bool()
    v0 = completion_values(critic, p_ids, p_mask, c_ids, c_mask)[..., 0]
    v1 = packed_prefix_outputs(critic, p_ids, p_mask, c_ids, c_mask)[..., 0]
    assert (v0[m] - v1[m]).abs().max() < 1e-5


def test_sharing_packs_only_models_that_pass_the_check(tok, monkeypatch):
    import rlvr.models.prefix as prefix

    p_ids, p_mask, c_ids, c_mask, _ = ragged_batch(tok, seed=1)
    model = build_tiny_model(tok, seed=3, **ARCH)
    sharing = PrefixSharing("always", pack_tokens=512)
    assert sharing.use(model, p_ids, p_mask, c_ids, c_mask) and sharing.pack_tokens_for(model) == 512
    assert PrefixSharing("always").use(model, p_ids, p_mask, c_ids, c_mask)  # pack_tokens 0: never packed
    config = type("C", (), {"_attn_implementation": "flash_attention_2"})()
    assert "flash_attention_2" in prefix.packing_support(type("M", (), {"config": config})())
    notes = []
    monkeypatch.setattr(prefix, "packing_support", lambda m: "no 4D masks here")
    sharing = PrefixSharing("always", pack_tokens=512, log=notes.append)
    assert sharing.use(model, p_ids, p_mask, c_ids, c_mask)  # still shares, through the KV cache
    assert sharing.pack_tokens_for(model) == 0 and any("no 4D masks here" in n for n in notes)
