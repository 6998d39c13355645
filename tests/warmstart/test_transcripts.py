"""Warm starts on an environment's transcripts: each segment tokenized on its own, the environment's parts in the
forward but not in the loss (a gradient of exactly 0 there)."""

import random

import torch

from rlvr.envs import make_env
from rlvr.models.tiny import build_char_tokenizer, build_tiny_model
from rlvr.tasks import make_task
from rlvr.warmstart.sft import encode_sft_transcripts, sft_backward


def test_a_transcript_is_encoded_with_the_environments_part_out_of_the_loss():
    tok = build_char_tokenizer()
    task = make_task("arithmetic", ops="*", num_train=20, num_eval=5)
    p = task.problems("train")[0]
    env = make_env("calc", task=task, sft_call_share=1.0)
    a, b = p.meta["operands"]
    segments = env.sft_transcript(p, random.Random(0))
    assert segments == [(f"[{a}*{b}]", True), ("{" + str(a * b) + "}", False), (p.answer, True)]
    _, _, ids, mask, loss = encode_sft_transcripts(tok, [p, p], [segments, p.answer])
    n_call, n_obs, n_ans = len(f"[{a}*{b}]"), len(str(a * b)) + 2, len(p.answer)
    assert tok.decode(ids[0, : n_call + n_obs + n_ans]) == f"[{a}*{b}]{{{a * b}}}{p.answer}"
    assert loss[0].tolist()[: n_call + n_obs + n_ans + 1] == [1] * n_call + [0] * n_obs + [1] * (n_ans + 1)
    assert torch.equal(loss[1], mask[1])  # a plain text target: every token trained
    assert make_env("calc", task=task, sft_call_share=0.0).sft_transcript(p, random.Random(0)) == [(p.answer, True)]


def test_the_environments_tokens_get_no_gradient_in_the_warm_start():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0)
    task = make_task("arithmetic", ops="*", num_train=20, num_eval=5)
    p = task.problems("train")[0]
    segments = make_env("calc", task=task, sft_call_share=1.0).sft_transcript(p, random.Random(0))
    p_ids, p_mask, c_ids, c_mask, loss = encode_sft_transcripts(tok, [p], [segments])
    from rlvr.models import logprobs

    seen = {}
    original = logprobs.token_logprobs

    def watched(logits, tokens):
        lp = original(logits, tokens)
        lp.register_hook(lambda g: seen.setdefault("g", g))
        return lp

    import rlvr.warmstart.sft as sft

    sft.token_logprobs = watched
    try:
        sft_backward(model, p_ids, p_mask, c_ids, c_mask, loss_mask=loss)
    finally:
        sft.token_logprobs = original
    g = seen["g"][0]  # d loss / d log-prob of each target token
    environment = (c_mask[0] == 1) & (loss[0] == 0)
    assert environment.sum() > 0 and (g[environment] == 0).all() and (g[loss[0] == 1] != 0).all()
