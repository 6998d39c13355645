import pytest
import torch

from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.logprobs import completion_logits, token_logprobs
from rlvr.models.tiny import save_tiny
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.hf import HFRolloutEngine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model, tok = load_model_and_tokenizer(save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=1))
    return HFRolloutEngine(model, tok, batch_size=5)  # small chunks: exercises concatenation


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)])
def test_engine_logprobs_equal_a_forward_pass(engine, temperature, top_p):
    torch.manual_seed(0)
    prompts = ["1+2=", "123*45=", "7-9=", "hello world, a longer prompt="]
    r = engine.generate(prompts, SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=7, n=3))
    assert r.completion_ids.shape[0] == 12 and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    logits = completion_logits(engine.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                               temperature=temperature)
    if top_p < 1.0:  # the sampling distribution renormalises over the top-p nucleus
        probs = torch.softmax(logits, -1)
        sorted_p, order = probs.sort(-1, descending=True)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    lp = token_logprobs(logits, r.completion_ids)
    m = r.completion_mask.bool()
    assert torch.allclose(lp[m], r.rollout_logp[m], atol=1e-4)
    assert (r.rollout_logp[~m] == 0).all()


def test_eos_ends_a_completion_and_padding_follows(engine):
    tok = engine.tokenizer
    # Make EOS certain after two tokens by biasing the output layer: the model says "<eos>" always.
    model = engine.model
    saved = model.lm_head.weight.data.clone()
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 1e4
    hook = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        r = engine.generate(["1+1="], SamplingParams(temperature=1.0, max_new_tokens=5, n=2))
    finally:
        hook.remove()
        model.lm_head.weight.data.copy_(saved)
    assert r.finish_reason == ["stop", "stop"]
    assert r.completion_mask.tolist() == [[1], [1]] or r.completion_mask[:, 0].tolist() == [1, 1]
    assert r.completion_mask[:, 1:].sum() == 0
    assert r.texts == ["", ""]


def test_greedy_is_deterministic_and_length_capped(engine):
    p = SamplingParams(temperature=0, max_new_tokens=3)
    a, b = engine.generate(["5+5="], p), engine.generate(["5+5="], p)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert a.completion_ids.shape[1] <= 3
