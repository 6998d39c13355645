"""Chunked log-probs, entropy and mean log-prob (issue 14.6): exact against the plain computation
(log_softmax + gather, entropy_from_logits, mean - logsumexp), values and gradients; padding trim and
the plain forward's head restricted to the completion positions change nothing."""

import pytest
import torch

from rlvr.algorithms import entropy_from_logits
from rlvr.models.logprobs import (completion_logits, completion_outputs, logprob_stats, token_logprobs,
                                  trim_padding)
from rlvr.train.learner import mean_logprob


def plain(logits, tokens, temperature):
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    return token_logprobs(x, tokens), entropy_from_logits(x), mean_logprob(x)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1 << 22, 300, 7])  # one block; blocks of rows; blocks inside a row
def test_values_and_gradients_equal_the_plain_computation(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    B, T, V = 5, 6, 50
    logits = (torch.randn(B, T, V, generator=g) * 4).requires_grad_()
    tokens = torch.randint(0, V, (B, T), generator=g)
    ups = [torch.randn(B, T, generator=g) for _ in range(3)]
    ref = plain(logits, tokens, temperature)
    ref_grad = torch.autograd.grad(sum((r * u).sum() for r, u in zip(ref, ups)), logits)[0]
    out = logprob_stats(logits, tokens, temperature, chunk_elements=chunk)
    for a, b in zip(out, ref):
        assert a.dtype == torch.float32 and (a - b).abs().max() <= 1e-6
    grad = torch.autograd.grad(sum((o * u).sum() for o, u in zip(out, ups)), logits)[0]
    assert (grad - ref_grad).abs().max() <= 1e-6 * max(1.0, float(ref_grad.abs().max()))
    # any subset of the outputs (the others unused: their gradients are None)
    for k in range(3):
        gk = torch.autograd.grad((out_k := logprob_stats(logits, tokens, temperature, chunk)[k] * ups[k]).sum(), logits)[0]
        rk = torch.autograd.grad((plain(logits, tokens, temperature)[k] * ups[k]).sum(), logits)[0]
        assert (gk - rk).abs().max() <= 1e-6 * max(1.0, float(rk.abs().max())), k
        del out_k


def test_bf16_logits_are_upcast_chunk_by_chunk():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 4, 64, generator=g) * 3).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 64, (3, 4), generator=g)
    out = logprob_stats(logits, tokens, 1.0, chunk_elements=64)
    ref = plain(logits, tokens, 1.0)
    for a, b in zip(out, ref):
        assert (a - b).abs().max() <= 1e-6
    grad = torch.autograd.grad(out[0].sum() + out[1].sum(), logits)[0]
    rgrad = torch.autograd.grad(ref[0].sum() + ref[1].sum(), logits)[0]
    assert grad.dtype == torch.bfloat16 and torch.allclose(grad.float(), rgrad.float(), atol=1e-2)


@pytest.fixture(scope="module")
def model_and_batch():
    from rlvr.models.tiny import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4)
    enc = tok(["1+1=", "12*34=", "5"], return_tensors="pt", padding=True, padding_side="left")
    p_ids = torch.nn.functional.pad(enc["input_ids"], (3, 0), value=tok.pad_token_id)  # extra all-pad columns
    p_mask = torch.nn.functional.pad(enc["attention_mask"], (3, 0))
    c_ids = torch.tensor([[5, 6, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0], [8, 9, 10, 2, 0, 0]])
    c_mask = (c_ids != 0).long()
    return model, p_ids, p_mask, c_ids, c_mask


def test_head_only_at_the_completion_positions_and_trimmed_padding_change_nothing(model_and_batch):
    model, p_ids, p_mask, c_ids, c_mask = model_and_batch
    ref = completion_logits(model, p_ids, p_mask, c_ids, c_mask)
    out = completion_outputs(model, p_ids, p_mask, c_ids, c_mask)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
    t = trim_padding(p_ids, p_mask, c_ids, c_mask)
    assert t[0].shape[1] == p_ids.shape[1] - 3 and t[2].shape[1] == 4
    m = c_mask.bool()
    trimmed = completion_outputs(model, *t)
    assert (trimmed - ref[:, :4]).abs()[m[:, :4]].max() < 1e-5
    assert trim_padding(*t)[0] is t[0]  # nothing left to trim: the same tensors


def test_learner_forward_equals_the_plain_path(model_and_batch, fast_config):
    """Learner._forward_stats (trim + head at completions + chunked stats) against _logits + the plain
    functions, on the real positions; the trimmed positions are zeros."""
    from types import SimpleNamespace

    from rlvr.train.learner import Learner

    model, p_ids, p_mask, c_ids, c_mask = model_and_batch
    learner = Learner(model, fast_config("trainer.shared_prefix=never", "rollout.temperature=0.8"))
    exp = SimpleNamespace(rollout=SimpleNamespace(prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids,
                                                  completion_mask=c_mask))
    idx = torch.arange(3)
    logp, ent, mean = learner._forward_stats(model, exp, idx)
    ref = plain(learner._logits(model, exp, idx), c_ids, 1.0)  # _logits already divides by the temperature
    m = c_mask.bool()
    for a, b in zip((logp, ent, mean), ref):
        assert a.shape == b.shape and (a - b)[m].abs().max() < 1e-5
        assert (a[:, 4:] == 0).all()
