"""The lean sampler (rlvr.rollout.lean): the HF engine's contract tests run on it unchanged, its
log-probs equal a plain forward, its samples follow the model's distribution (chi-square against the
exact per-position probabilities and against the HF sampler), seeds, versions, early stop, the bf16
copy, other Llama-family architectures, and the fallback for models it cannot drive."""

import copy
import dataclasses
import importlib.util
import math
import warnings
from pathlib import Path

import pytest
import torch

from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.logprobs import completion_logits, token_logprobs
from rlvr.models.tiny import build_char_tokenizer, save_tiny
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.rollout.lean import LeanRolloutEngine, LeanUnsupported

# --- the HF engine's tests, engine-generic, collected here against the lean engine's fixture
_spec = importlib.util.spec_from_file_location("_hf_engine_tests", Path(__file__).with_name("test_hf_engine.py"))
_hf_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_hf_tests)
test_engine_logprobs_equal_a_forward_pass = _hf_tests.test_engine_logprobs_equal_a_forward_pass
test_eos_ends_a_completion_and_padding_follows = _hf_tests.test_eos_ends_a_completion_and_padding_follows
test_greedy_is_deterministic_and_length_capped = _hf_tests.test_greedy_is_deterministic_and_length_capped

PROMPTS = ["1+2=", "123*45=", "7-9=", "hello world, a longer prompt="]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=1)


@pytest.fixture(scope="module")
def engine(tiny_path):
    model, tok = load_model_and_tokenizer(tiny_path)
    return LeanRolloutEngine(model, tok, batch_size=5)  # 5 // n prompts per chunk: exercises concatenation


@pytest.fixture(scope="module")
def peaked():
    """A small Llama (grouped-query attention, untied head scaled up) whose next-token distribution is
    peaked and position-dependent, with an EOS bias so that completions end at different lengths: the
    distribution tests have power, greedy decoding has no near-ties, batches are ragged."""
    model, tok = _arch("llama", scale=10.0)
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 4.0
    model.lm_head.register_forward_hook(lambda m, i, o: o + bias)  # part of this model (forwards too)
    return model, tok


def _forward_logp(model, r, temperature, top_p=1.0):
    logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                               temperature=temperature)
    return token_logprobs(_nucleus(logits, top_p), r.completion_ids)


def _nucleus(logits, top_p):
    """The top-p renormalisation written independently of the engines (descending order)."""
    if top_p >= 1.0:
        return logits
    probs = torch.softmax(logits, -1)
    sorted_p, order = probs.sort(-1, descending=True)
    drop_sorted = (sorted_p.cumsum(-1) - sorted_p) > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def test_greedy_and_logprobs_match_the_hf_engine(peaked):
    model, tok = peaked
    lean, hf = LeanRolloutEngine(model, tok), HFRolloutEngine(model, tok)
    p = SamplingParams(temperature=0, max_new_tokens=8, n=2)
    a, b = lean.generate(PROMPTS, p), hf.generate(PROMPTS, p)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.finish_reason == b.finish_reason
    assert torch.equal(a.completion_mask, b.completion_mask) and a.texts == b.texts
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.allclose(a.rollout_logp, b.rollout_logp, atol=1e-4)
    m = a.completion_mask.bool()
    assert torch.allclose(_forward_logp(model, a, 0)[m], a.rollout_logp[m], atol=1e-4)
    assert 0 < m.sum() < m.numel()  # ragged: finished rows left the batch on the way
    c = LeanRolloutEngine(model, tok, compact_at=0).generate(PROMPTS, p)  # no row ever dropped
    assert torch.equal(c.completion_ids, a.completion_ids) and torch.allclose(c.rollout_logp, a.rollout_logp, atol=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)])
def test_sampled_logprobs_equal_a_forward_on_ragged_batches(peaked, temperature, top_p):
    model, tok = peaked
    r = LeanRolloutEngine(model, tok, batch_size=7).generate(
        PROMPTS, SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=9, n=4, seed=3))
    m = r.completion_mask.bool()
    assert 0 < m.sum() < m.numel()  # ragged: some rows stop early (peaked model emits EOS)
    assert torch.allclose(_forward_logp(model, r, temperature, top_p)[m], r.rollout_logp[m], atol=1e-4)
    assert (r.rollout_logp[~m] == 0).all() and (r.completion_ids[~m] == tok.pad_token_id).all()
    for row, mask, reason in zip(r.completion_ids, r.completion_mask, r.finish_reason):
        n = int(mask.sum())
        assert reason == ("stop" if row[n - 1] == tok.eos_token_id else "length")
        assert (row[:n - 1] != tok.eos_token_id).all()


def test_seeded_calls_reproduce_and_leave_the_global_rng_alone(engine):
    p = SamplingParams(temperature=1.0, max_new_tokens=6, n=3, seed=11)
    state = torch.random.get_rng_state()
    a, b = engine.generate(PROMPTS, p), engine.generate(PROMPTS, p)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.rollout_logp, b.rollout_logp)
    c = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=6, n=3, seed=12))
    assert not torch.equal(a.completion_ids, c.completion_ids)
    torch.manual_seed(5)
    d = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=6, n=3))
    torch.manual_seed(5)
    e = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=6, n=3))
    assert torch.equal(d.completion_ids, e.completion_ids)  # unseeded: the global RNG, as HF generate


def test_versions_and_weight_updates(tiny_path):
    model, tok = load_model_and_tokenizer(tiny_path)
    engine = LeanRolloutEngine(model, tok)
    r = engine.generate(["1+1="], SamplingParams(max_new_tokens=2, n=2))
    assert r.policy_version == 0 and r.versions.tolist() == [0, 0] and r.prompt_index.tolist() == [0, 0]
    other, _ = load_model_and_tokenizer(save_tiny(Path(tiny_path).parent / "other", seed=7))
    engine.update_weights(other.state_dict(), 4)
    r = engine.generate(["1+1=", "2+2="], SamplingParams(temperature=0, max_new_tokens=3, n=1))
    assert r.policy_version == 4 and r.versions.tolist() == [4, 4]
    want = HFRolloutEngine(other, tok).generate(["1+1=", "2+2="], SamplingParams(temperature=0, max_new_tokens=3))
    assert torch.allclose(r.rollout_logp, want.rollout_logp, atol=1e-4)


def test_decoding_stops_when_every_row_has_finished(engine):
    model, tok = engine.model, engine.tokenizer
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 1e4
    hook = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        r = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=50, n=3))
    finally:
        hook.remove()
    assert r.completion_ids.shape[1] == 1 and r.finish_reason == ["stop"] * 12 and r.num_generated_tokens == 12


def test_training_mode_is_restored(engine):
    engine.model.train()
    engine.generate(["1+1="], SamplingParams(max_new_tokens=2))
    assert engine.model.training
    engine.model.eval()


# ------------------------------------------------------------------ the distribution
def _processed(logits, temperature, top_p):
    return torch.softmax(_nucleus(logits / temperature, top_p), -1)


def _exact_marginals(model, tok, prompt, temperature, top_p):
    """Exact probabilities of the first and second completion token (second: a 'finished' bin at the
    end for rows that ended with EOS first), from plain forwards of the model."""
    ids = tok([prompt], return_tensors="pt")["input_ids"]
    V = model.config.vocab_size
    with torch.no_grad():
        p0 = _processed(model(input_ids=ids).logits[0, -1].double(), temperature, top_p)
        seqs = torch.cat([ids.expand(V, -1), torch.arange(V)[:, None]], dim=1)
        p1_given = _processed(model(input_ids=seqs).logits[:, -1].double(), temperature, top_p)  # [V, V]
    alive = torch.ones(V, dtype=torch.double)
    alive[tok.eos_token_id] = 0
    p1 = (p0 * alive) @ p1_given
    return p0, torch.cat([p1, p0[tok.eos_token_id].reshape(1)])


def _counts(r, tok, position, V):
    col = r.completion_ids[:, position] if r.completion_ids.shape[1] > position else \
        torch.full((r.completion_ids.shape[0],), tok.pad_token_id)
    done = r.completion_mask[:, position] == 0 if r.completion_ids.shape[1] > position else torch.ones_like(col, dtype=torch.bool)
    idx = torch.where(done, torch.full_like(col, V), col)
    return torch.bincount(idx, minlength=V + 1)[: V + (1 if position > 0 else 0)].double()


def _bins(expected_probs, n, min_expected=5.0):
    """Category indices grouped into bins: every category expected >= 5 times alone, the other ones of
    non-zero probability pooled (into the smallest bin if the pool is still expected < 5 times)."""
    e = expected_probs * n
    big = sorted((e >= min_expected).nonzero().flatten().tolist(), key=lambda i: -float(e[i]))
    small = ((e < min_expected) & (e > 0)).nonzero().flatten().tolist()
    bins = [[i] for i in big]
    if small and float(e[small].sum()) >= min_expected:
        bins.append(small)
    elif small:
        bins[-1] = bins[-1] + small
    return bins


def _binned(x, bins):
    return torch.stack([x[b].sum() for b in bins])


def chi2_upper(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df); z = 3.719 is the 1e-4 upper normal quantile."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def _gof(observed, probs, bins):
    e = _binned(probs, bins) * observed.sum()
    o = _binned(observed, bins)
    return float(((o - e) ** 2 / e).sum()), len(bins) - 1


def _homogeneity(a, b, bins):
    a, b = _binned(a, bins), _binned(b, bins)
    col = a + b
    keep = col > 0
    a, b, col = a[keep], b[keep], col[keep]
    stat = 0.0
    for row in (a, b):
        e = col * row.sum() / col.sum()
        stat += float(((row - e) ** 2 / e).sum())
    return stat, int(keep.sum()) - 1


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)])
def test_token_frequencies_match_the_model_and_the_hf_sampler(peaked, temperature, top_p):
    model, tok = peaked
    V, N, prompt = model.config.vocab_size, 6000, "12+7="
    exact = _exact_marginals(model, tok, prompt, temperature, top_p)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=2, n=N, seed=2024)
    lean = LeanRolloutEngine(model, tok).generate([prompt], params)
    # another seed: with the same one both would draw the same uniforms (same RNG algorithm and stream)
    hf = HFRolloutEngine(model, tok).generate([prompt], dataclasses.replace(params, seed=2025))
    for pos in (0, 1):
        probs = exact[pos]
        assert probs.max() < 0.9 and (probs > 0.01).sum() >= 4  # a distribution worth testing
        bins = _bins(probs, N)
        got, want = _counts(lean, tok, pos, V), _counts(hf, tok, pos, V)
        assert got[probs == 0].sum() == 0 and want[probs == 0].sum() == 0  # nothing outside the nucleus
        stat, df = _gof(got, probs, bins)
        assert stat < chi2_upper(df), (pos, stat, df)
        stat, df = _gof(want, probs, bins)
        assert stat < chi2_upper(df), ("hf", pos, stat, df)
        stat, df = _homogeneity(got, want, bins)
        assert stat < chi2_upper(df), ("lean vs hf", pos, stat, df)
        # power: the same samples are rejected against a wrong temperature
        wrong = _exact_marginals(model, tok, prompt, temperature * 1.25, top_p)[pos]
        stat, df = _gof(got, wrong, _bins(wrong, N))
        assert stat > chi2_upper(df), ("no power", pos, stat, df)


# ------------------------------------------------------------------ bf16 copy
def test_a_bfloat16_copy_samples_close_to_fp32_and_follows_the_weights(tiny_path):
    model, tok = load_model_and_tokenizer(tiny_path)
    engine = LeanRolloutEngine(model, tok, dtype="bfloat16")
    p = SamplingParams(temperature=1.0, max_new_tokens=6, n=4, seed=0)
    r = engine.generate(PROMPTS, p)
    assert all(t.dtype == torch.float32 for t in model.parameters())  # the learner's weights untouched
    assert all(t.dtype == torch.bfloat16 for t in engine._shadow.parameters())
    assert r.rollout_logp.dtype == torch.float32
    m = r.completion_mask.bool()
    gap = (_forward_logp(model, r, 1.0)[m] - r.rollout_logp[m]).abs()
    assert 0 < gap.max() < 0.05
    old = copy.deepcopy(model)
    other, _ = load_model_and_tokenizer(save_tiny(Path(tiny_path).parent / "other_bf16", seed=7))
    with torch.no_grad():  # the learner's module changes in place (as an optimizer step does): the copy follows
        model.load_state_dict(other.state_dict())
    r = engine.generate(PROMPTS, p)
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(engine._shadow.parameters(), model.parameters()))
    m = r.completion_mask.bool()
    gap_new = (_forward_logp(model, r, 1.0)[m] - r.rollout_logp[m]).abs().max()
    gap_old = (_forward_logp(old, r, 1.0)[m] - r.rollout_logp[m]).abs().max()
    assert gap_new < 0.05 < gap_old


# ------------------------------------------------------------------ other architectures, fallback
def _arch(kind, scale=20.0):
    import transformers

    tok = build_char_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    elif kind == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=16, **common)
        cls = transformers.Qwen3ForCausalLM
    elif kind == "mistral_window":
        cfg = transformers.MistralConfig(sliding_window=6, **common)
        cls = transformers.MistralForCausalLM
    else:  # llama with grouped-query attention and an untied head
        cfg = transformers.LlamaConfig(tie_word_embeddings=False, **common)
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model, tok


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2", "qwen3", "mistral_window"])
def test_other_llama_family_models(kind):
    model, tok = _arch(kind)
    engine = LeanRolloutEngine(model, tok)
    r = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=7, n=3, seed=1))
    m = r.completion_mask.bool()
    assert torch.allclose(_forward_logp(model, r, 1.0)[m], r.rollout_logp[m], atol=1e-4)
    g = SamplingParams(temperature=0, max_new_tokens=7)
    assert torch.equal(engine.generate(PROMPTS, g).completion_ids, HFRolloutEngine(model, tok).generate(PROMPTS, g).completion_ids)


def test_an_unsupported_model_falls_back_to_hf_with_a_warning(fast_config):
    import transformers

    from rlvr.config import ConfigWarning
    from rlvr.rollout.factory import make_engine

    tok = build_char_tokenizer()
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(LeanUnsupported, match="gpt2"):
        LeanRolloutEngine(gpt2, tok)
    cfg = fast_config("rollout.engine=lean")
    with pytest.warns(ConfigWarning, match="rollout.engine = 'lean' cannot drive this model"):
        engine = make_engine(cfg, gpt2, tok, "unused")
    assert isinstance(engine, HFRolloutEngine)
    tiny, _ = _arch("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(make_engine(cfg, tiny, tok, "unused"), LeanRolloutEngine)
        assert isinstance(make_engine(fast_config(), tiny, tok, "unused"), LeanRolloutEngine)  # the default
        assert isinstance(make_engine(fast_config("rollout.engine=hf"), tiny, tok, "unused"), HFRolloutEngine)


def test_lora_adapters_are_applied(tiny_path):
    pytest.importorskip("peft")
    from rlvr.config import LoraSection
    from rlvr.models.lora import apply_lora

    base, tok = load_model_and_tokenizer(tiny_path)
    model = apply_lora(base, LoraSection(enabled=True, r=4, alpha=8.0), base_path=tiny_path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-trivial adapter
    r = LeanRolloutEngine(model, tok).generate(PROMPTS, SamplingParams(max_new_tokens=5, n=2, seed=0))
    m = r.completion_mask.bool()
    assert torch.allclose(_forward_logp(model, r, 1.0)[m], r.rollout_logp[m], atol=1e-4)


@pytest.mark.slow
def test_async_workers_run_the_lean_engine_on_their_bf16_copy(fast_config, monkeypatch):
    """runtime.mode=async: each rollout worker builds its engine with rollout.engine (factory.engine_on_module,
    called by the local pool of rlvr.experience.workers)."""
    import json

    from rlvr.experience import workers
    from rlvr.rollout import factory
    from rlvr.train.loop import train

    built = []
    real = factory.engine_on_module
    monkeypatch.setattr(workers, "engine_on_module", lambda *a: built.append(real(*a)) or built[-1])
    cfg = fast_config("trainer.steps=3", "runtime.mode=async", "runtime.max_staleness=1", "rollout.engine=lean",
                      "rollout.dtype=bfloat16", "runtime.weight_sync=sparse")
    result = train(cfg, log=lambda *_: None)
    assert built and all(isinstance(e, LeanRolloutEngine) for e in built)
    assert all(p.dtype == torch.bfloat16 for e in built for p in e.model.parameters())
    steps = [r for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines()) if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["mismatch_k3"]) for r in steps)


def test_the_old_logp_rule_knows_when_lean_falls_back_to_hf_generate():
    """lean on a model it cannot drive runs HF generate (and its generation config): the reuse rule
    must then check that config, as for rollout.engine=hf."""
    import transformers

    from rlvr.rollout.factory import SAMPLES_WITH_HF_GENERATE

    tok = build_char_tokenizer()
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    tiny, _ = _arch("llama")
    assert SAMPLES_WITH_HF_GENERATE["lean"](gpt2) and not SAMPLES_WITH_HF_GENERATE["lean"](tiny)
    assert SAMPLES_WITH_HF_GENERATE["hf"](tiny) and not SAMPLES_WITH_HF_GENERATE["vllm"](tiny)


def test_every_engine_says_whether_it_may_run_hf_generate():
    """A new rollout.engine must state it (else the old-log-prob reuse rule would raise KeyError)."""
    import typing

    from rlvr.config import RolloutSection
    from rlvr.rollout.factory import ENGINES, SAMPLES_WITH_HF_GENERATE

    choices = set(typing.get_args(RolloutSection.model_fields["engine"].annotation))
    assert set(SAMPLES_WITH_HF_GENERATE) == set(ENGINES) == choices
