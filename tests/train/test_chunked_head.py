"""The learner with the chunked LM head (issue 30, item 3): one update equals the plain head's (the tiny model,
a Qwen3-shaped stand-in with a BPE vocabulary, LoRA), and ``auto`` turns it on only for large vocabularies."""

import copy

import pytest
import torch

from rlvr.models.lm_head import head_bypassed, head_of


@pytest.mark.parametrize("which,shared", [("tiny", "never"), ("tiny", "always"), ("qwen3_instruct", "never"),
                                          ("tiny_lora", "never")])
def test_an_update_with_the_chunked_head_equals_the_plain_one(which, shared, stand_in, fast_config, tmp_path,
                                                             arithmetic_experience):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.train.learner import Learner

    path = stand_in(which) if which == "qwen3_instruct" else str(save_tiny(tmp_path / "tiny", seed=6))
    base, tok = load_model_and_tokenizer(path)
    over = ["trainer.max_grad_norm=1e9", "trainer.lr=1e-3", "trainer.num_minibatches=2", "trainer.entropy_coef=0.01"]
    if which == "tiny_lora":
        from rlvr.models.lora import apply_lora

        over.append("model.lora.enabled=true")
        base = apply_lora(base, fast_config(*over).model.lora)
    exp = arithmetic_experience(base, tok)
    out = {}
    for setting in ("never", "always"):
        model = copy.deepcopy(base)
        learner = Learner(model, fast_config(f"trainer.chunked_head={setting}", f"trainer.shared_prefix={shared}",
                                             *over))
        grads = []  # the gradient each optimizer step is about to apply
        learner.optimizer.register_step_pre_hook(lambda opt, a, k: grads.append(torch.cat(
            [p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])))
        metrics = learner.update(exp, step=0)
        out[setting] = (metrics, grads[0], learner.chunked_head)
        assert (learner.prefix.used > 0) == (shared == "always")  # the shared-prefix forward ran when asked
    assert not out["always"][2].reasons and out["always"][2].state  # it ran chunked
    # the first step's gradient, from the same weights (later steps start from AdamW updates, which turn float
    # noise in near-zero gradient entries into steps of lr: parameters after the update are no exact check)
    g_plain, g_chunked = out["never"][1], out["always"][1]
    assert g_plain.norm() > 0 and float((g_chunked - g_plain).norm() / g_plain.norm()) < 1e-5
    assert float((g_chunked - g_plain).abs().max()) < 1e-6 * max(1.0, float(g_plain.abs().max()))
    for k in ("loss", "entropy", "grad_norm"):
        assert out["always"][0][k] == pytest.approx(out["never"][0][k], rel=1e-4, abs=1e-7), k


def test_auto_is_off_for_small_logits_and_the_head_comes_back(tmp_path, fast_config, arithmetic_experience):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.train.learner import Learner

    model, tok = load_model_and_tokenizer(str(save_tiny(tmp_path / "tiny", seed=7)))
    head = model.get_output_embeddings()
    with head_bypassed(model) as h:
        assert h is head and isinstance(model.get_output_embeddings(), torch.nn.Identity)
    assert model.get_output_embeddings() is head
    learner = Learner(model, fast_config())
    learner.update(arithmetic_experience(model, tok), step=0)
    assert not learner.chunked_head.state  # auto: a few KiB of logits, the plain head (never checked)
    from rlvr.models.lm_head import AUTO_MIN_LOGITS_BYTES

    checks = []
    assert learner.chunked_head.use(model, lambda: checks.append(1) or 0.0, -(-AUTO_MIN_LOGITS_BYTES // (4 * 100)))
    assert checks == [1] and learner.chunked_head.use(model, lambda: checks.append(1) or 0.0, 10**9)
    assert checks == [1]  # checked once per model
    assert not learner.chunked_head.use(model, lambda: 0.0, 10)  # small batches keep the plain head


def test_heads_it_refuses():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(4, 10, bias=False)
            self.config = type("C", (), {"final_logit_softcapping": 30.0})()

        def get_output_embeddings(self):
            return self.lm_head

    assert "final_logit_softcapping" in head_of(Scaled())
    with pytest.raises(ValueError, match="no chunked head"):
        with head_bypassed(Scaled()):
            pass
