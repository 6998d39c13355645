"""Every engine on real architectures (Qwen3- and Qwen2-shaped stand-ins, subword tokenizer, ChatML),
in both eos conventions: where a completion ends, and exactness against Hugging Face.

The stand-ins have random weights, so a stop token is made likely by a fixed bias on its logit (a
forward hook on the output head, which every engine runs): with greedy decoding, rows then end at
different steps, some at the budget. Hugging Face ``generate`` with the model's own generation config
(which lists every eos id) is the reference for where greedy completions end.
"""

from __future__ import annotations

import pytest
import torch

from rlvr.models.load import load_model_and_tokenizer
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.rollout.lean import LeanRolloutEngine
from rlvr.rollout.stops import StopConditions, end_of_turn_token_id
from rlvr.tasks.dataset import render_prompt

NAMES = ("qwen3_instruct", "qwen3_base", "qwen2_instruct", "qwen2_base")
QUESTIONS = [(1, 2), (13, 45), (100, 7), (5, 5), (22, 0), (9, 99), (640, 12), (3, 818)]


def _prompts(tok):
    return [render_prompt(tok, [{"role": "user", "content": f"What is {a}+{b}?"}]) for a, b in QUESTIONS]


def _bias_stop(model, tok, token: str, bias: float):
    """Add ``bias`` to the logit of ``token`` wherever the output head runs."""
    tid = tok.convert_tokens_to_ids(token)

    def hook(module, inputs, output):
        out = output.clone()
        out[..., tid] += bias
        return out

    head = model.get_output_embeddings()
    return head.register_forward_hook(hook)


def _greedy_reference(model, tok, prompts, max_new_tokens):
    """HF generate's own greedy ids, cut after its first eos of the generation config (kept)."""
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
    eos = set(model.generation_config.eos_token_id)
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        kept = []
        for t in row:
            kept.append(t)
            if t in eos:
                break
        rows.append(kept)
    return rows


def _rows(rollout):
    return [ids[: int(m.sum())] for ids, m in zip(rollout.completion_ids.tolist(), rollout.completion_mask)]


@pytest.mark.parametrize("name", NAMES)
def test_stop_set_is_the_models(stand_in, name):
    model, tok = load_model_and_tokenizer(stand_in(name))
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert end_of_turn_token_id(tok) == im_end  # ChatML's end of turn, found from the template
    stops = StopConditions.for_model(model, tok)
    assert set(stops.token_ids) == ({im_end} if name.endswith("instruct") else {eot, im_end})
    if name.endswith("base"):
        assert tok.eos_token_id == eot  # the trap: the tokenizer's eos is not the end of a turn


@pytest.mark.parametrize("name", NAMES)
def test_greedy_engines_end_where_hf_generate_ends(stand_in, name):
    """lean and hf give HF generate's greedy tokens, ending at <|im_end|> even where eos is <|endoftext|>."""
    model, tok = load_model_and_tokenizer(stand_in(name))
    prompts = _prompts(tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    N = 10
    params = SamplingParams(temperature=0, max_new_tokens=N, n=1)
    for bias in [0.1 * k for k in range(40)]:  # the first bias under which some rows stop and some do not
        handle = _bias_stop(model, tok, "<|im_end|>", bias)
        try:
            ref = _greedy_reference(model, tok, prompts, N)
            hf = HFRolloutEngine(model, tok).generate(prompts, params)
            lean = LeanRolloutEngine(model, tok).generate(prompts, params)
        finally:
            handle.remove()
        if {len(r) == N and r[-1] != im_end for r in ref} == {True, False}:
            break
    else:
        pytest.fail("no bias gave both stopped and truncated rows")
    assert _rows(hf) == ref
    assert _rows(lean) == ref
    for r in (hf, lean):
        for ids, finish, text in zip(_rows(r), r.finish_reason, r.texts):
            if finish == "stop":
                assert ids[-1] == im_end and im_end not in ids[:-1]
                assert text == tok.decode(ids[:-1], skip_special_tokens=True)
            else:
                assert len(ids) == N and im_end not in ids
    assert hf.finish_reason == lean.finish_reason
    assert set(hf.finish_reason) == {"stop", "length"}


@pytest.mark.parametrize("name", ["qwen3_base", "qwen2_base"])
def test_sampled_rows_end_at_their_first_stop_and_logprobs_match_a_forward(stand_in, name):
    """Sampling (T=1): each row ends at its first stop token (none after it is kept or trained), and
    the lean engine's log-probs are the teacher-forced forward's (1e-4) on these architectures."""
    from rlvr.models.logprobs import completion_logits, token_logprobs

    model, tok = load_model_and_tokenizer(stand_in(name))
    prompts = _prompts(tok)[:4]
    stop_ids = set(StopConditions.for_model(model, tok).token_ids)
    handle = _bias_stop(model, tok, "<|im_end|>", 3.0)
    try:
        for engine in (HFRolloutEngine(model, tok), LeanRolloutEngine(model, tok)):
            r = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12, n=4, seed=3))
            assert "stop" in r.finish_reason
            for ids, mask, finish in zip(r.completion_ids.tolist(), r.completion_mask.tolist(), r.finish_reason):
                n = sum(mask)
                assert mask == [1] * n + [0] * (len(mask) - n)  # contiguous: nothing after the end
                kept = ids[:n]
                assert not stop_ids & set(kept[:-1])
                assert (kept[-1] in stop_ids) == (finish == "stop")
            if isinstance(engine, LeanRolloutEngine):
                with torch.no_grad():
                    logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                               r.completion_mask)
                    forward = token_logprobs(logits, r.completion_ids) * r.completion_mask
                assert torch.allclose(forward, r.rollout_logp, atol=1e-4)
    finally:
        handle.remove()


def test_stop_strings_and_ids_in_finalize(stand_in):
    """The stop rule on hand-made ids: a stop string ends a row at the token completing it (kept) and
    the text is cut where it starts; a user stop id ends a row like eos; the text never holds the stop."""
    _, tok = load_model_and_tokenizer(stand_in("qwen3_instruct"))
    ids = tok("12 + 3 = 15\n\nmore text", add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id
    rows = [ids, ids[:3] + [im_end] + ids[3:]]
    T = max(len(r) for r in rows)
    completion = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    logp = -torch.rand(completion.shape)
    stops = StopConditions.resolve(tok, None, stop=["\n\n"])
    out, mask, lp, finish, texts = stops.finalize(completion, logp, tok)
    assert finish == ["stop", "stop"]
    assert texts[0] == "12 + 3 = 15"
    assert texts[1] == tok.decode(ids[:3])
    n0 = int(mask[0].sum())
    assert "\n\n" in tok.decode(ids[:n0]) and "\n\n" not in tok.decode(ids[: n0 - 1])
    assert int(mask[1].sum()) == 4 and int(out[1, 3]) == im_end and (out[1, 4:] == pad).all()
    assert (lp[mask == 0] == 0).all() and torch.equal(lp[mask == 1], logp[mask == 1])
    # a user stop id; no stop at all is "length"
    plus = tok.convert_tokens_to_ids(tok.tokenize(" +")[0])
    only_ids = StopConditions.resolve(tok, None, stop_token_ids=[plus])
    _, mask, _, finish, texts = only_ids.finalize(completion[:1], logp[:1], tok)
    assert finish == ["stop"] and texts == ["12"]
    none = StopConditions.resolve(tok, None)
    _, mask, _, finish, _ = none.finalize(completion[:1, :2], logp[:1, :2], tok)
    assert finish == ["length"] and mask.tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="rollout.stop_token_ids"):
        StopConditions.resolve(tok, None, stop_token_ids=[10 ** 7])
    with pytest.raises(ValueError, match="rollout.stop"):
        StopConditions.resolve(tok, None, stop=[""])


def test_engines_honour_user_stops_identically(stand_in):
    """rollout.stop / rollout.stop_token_ids reach both engines through the factory, with one result."""
    from rlvr.config import load_config
    from rlvr.rollout.factory import make_engine

    path = stand_in("qwen3_instruct")
    model, tok = load_model_and_tokenizer(path)
    prompts = _prompts(tok)
    params = SamplingParams(temperature=0, max_new_tokens=10, n=1)
    plain = HFRolloutEngine(model, tok).generate(prompts, params)
    # a token greedy decoding emits somewhere: make it a stop id
    emitted = [t for row in _rows(plain) for t in row[1:]]
    assert emitted, "the stand-in should emit something"
    stop_id = emitted[0]
    results = []
    for engine in ("hf", "lean"):
        cfg = load_config("configs/grpo_dataset_tiny.yaml", [f"model.path={path}", f"rollout.engine={engine}",
                                                             f"rollout.stop_token_ids=[{stop_id}]"])
        results.append(make_engine(cfg, model, tok, path).generate(prompts, params))
    hf, lean = results
    assert _rows(hf) == _rows(lean) and hf.texts == lean.texts and hf.finish_reason == lean.finish_reason
    assert any(f == "stop" and row[-1] == stop_id for f, row in zip(hf.finish_reason, _rows(hf)))
