"""LoRA through peft: only the adapter trains, the reference is the base, checkpoints hold the adapter,
resume is exact, the merged export reloads with from_pretrained and gives the same logits.

peft is in the dev extra; without it these tests skip (``pip install 'rlvr[lora]'``)."""

import copy
import json
import sys
import warnings

import pytest
import torch

peft = pytest.importorskip("peft", reason="LoRA tests need peft: pip install 'rlvr[lora]' (it is in rlvr[dev])")

from safetensors.torch import load_file  # noqa: E402

from rlvr.config import ConfigWarning  # noqa: E402
from rlvr.models.load import load_model_and_tokenizer  # noqa: E402
from rlvr.models.lora import (apply_lora, load_adapter_checkpoint, merged_state_dict, quiet_peft,  # noqa: E402
                              reference_weights, sync_tensors)
from rlvr.models.logprobs import completion_logits, token_logprobs  # noqa: E402
from rlvr.models.tiny import save_tiny  # noqa: E402
from rlvr.rollout.base import SamplingParams  # noqa: E402
from rlvr.rollout.hf import HFRolloutEngine  # noqa: E402
from rlvr.tasks import make_task  # noqa: E402
from rlvr.experience.batch import PromptSampler  # noqa: E402
from rlvr.train.learner import Learner  # noqa: E402
from rlvr.experience.producer import PromptDraws, RolloutProducer  # noqa: E402

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=3)


def _lora_section(**kw):
    from rlvr.config import LoraSection

    return LoraSection(enabled=True, r=4, alpha=8.0, **kw)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_fresh_adapter_changes_nothing_and_targets_the_named_layers(tiny_path):
    base, tok = load_model_and_tokenizer(tiny_path)
    ids = tok(["12+7=", "3*4="], return_tensors="pt", padding=True)["input_ids"]
    want = _logits(base, ids)
    model = apply_lora(copy.deepcopy(base), _lora_section(target_modules=["q_proj", "v_proj"]), base_path=tiny_path)
    assert torch.equal(_logits(model, ids), want)  # B = 0 at the start
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and (".q_proj." in n or ".v_proj." in n) for n in trainable)
    assert set(sync_tensors(model)) == {k for k in model.state_dict() if "lora_" in k}
    with pytest.raises(ValueError, match=r"model.lora.target_modules = \['nope'\].*linear layers: .*q_proj"):
        apply_lora(copy.deepcopy(base), _lora_section(target_modules=["nope"]))


@pytest.fixture(scope="module")
def experience(tiny_path):
    model, tok = load_model_and_tokenizer(tiny_path)
    task = make_task("arithmetic", num_train=200, num_eval=10)
    sampler = PromptSampler(task.problems("train"), 0)
    producer = RolloutProducer(HFRolloutEngine(model, tok), task, SamplingParams(temperature=1.0, max_new_tokens=4, n=4),
                               prompts_per_step=5)
    exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices), seed=0)
    exp.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 5)  # signal in every group
    return exp


def test_only_the_adapter_changes_and_the_reference_is_the_base(tiny_path, experience, fast_config):
    cfg = fast_config(*LORA, "kl.placement=loss", "kl.coef=0.1", "trainer.lr=1e-2", "trainer.num_minibatches=2")
    base, _ = load_model_and_tokenizer(tiny_path)
    model = apply_lora(copy.deepcopy(base), cfg.model.lora, base_path=tiny_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = Learner(model, cfg)
    assert learner.ref_model is model  # no second copy of the weights
    held = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if "lora_" in n}
    learner.update(experience, step=0)
    learner.update(experience, step=1)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:5]
    assert any("lora_B" in k for k in changed)
    # the reference (adapter off) is exactly the base model; the policy (adapter on) has moved
    r = experience.rollout
    args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    with torch.no_grad():
        with reference_weights(model):
            ref = token_logprobs(completion_logits(model, *args), r.completion_ids)
        policy = token_logprobs(completion_logits(model, *args), r.completion_ids)
        want = token_logprobs(completion_logits(base, *args), r.completion_ids)
    assert torch.equal(ref, want)
    assert not torch.allclose(policy, want)
    # the merged state dict has the base model's names and computes the adapted policy
    merged = copy.deepcopy(base)
    merged.load_state_dict(merged_state_dict(model))
    with torch.no_grad():
        got = token_logprobs(completion_logits(merged, *args), r.completion_ids)
    assert torch.allclose(got, policy, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# end to end: checkpoints hold the adapter, resume is exact, export reloads


def _adapter(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "adapter_model.safetensors"))


TRAIN = (*LORA, "model.warm_start=false", "trainer.steps=4", "logging.checkpoint_every=2",
         "trainer.entropy_coef=0.05", "trainer.lr=1e-3", "kl.placement=loss", "kl.coef=0.05")


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """A 4-step LoRA run straight, and the same run stopped after 2 steps and resumed."""
    from rlvr.config import load_config
    from rlvr.train.loop import train

    FAST = _fast_overrides()

    out = tmp_path_factory.mktemp("runs")

    def cfg(name):
        return load_config("configs/grpo_arithmetic_tiny.yaml", FAST + [f"run.output_dir={out}", *TRAIN, f"run.name={name}"])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # the untrained model's first batch has no variance
        straight = train(cfg("straight"), log=lambda *_: None).run_dir
        assert train(cfg("interrupted"), stop_after=2, log=lambda *_: None) is None
        resumed = train(resume=out / "interrupted", log=lambda *_: None).run_dir
    return straight, resumed


@pytest.mark.slow
def test_async_rollout_workers_sample_with_the_adapter_and_receive_only_it(fast_config):
    """Thread workers hold a PeftModel copy; each publication carries the adapter's tensors only."""
    from rlvr.train.loop import train

    cfg = fast_config(*TRAIN, "trainer.steps=3", "runtime.mode=async", "runtime.num_rollout_workers=1",
                      "runtime.debug_checksums=true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        run_dir = train(cfg, log=lambda *_: None).run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "sync/bytes" in r]
    assert steps, "no weight publication was logged"
    adapter_bytes = sum(v.numel() * 4 for v in _adapter(run_dir, 3).values())
    assert all(r["sync/dense_bytes"] == adapter_bytes for r in steps)  # not the 2.6M-parameter base


@pytest.mark.slow
def test_checkpoints_hold_the_adapter_and_resume_is_exact(lora_runs):
    straight, resumed = lora_runs
    ckpt = straight / "checkpoints" / "step_000004"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    a, b = _adapter(straight, 4), _adapter(resumed, 4)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it trained

    def rewards(d):
        return [json.loads(line).get("entropy") for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert rewards(straight) == rewards(resumed)
    # the adapter restores into a fresh PeftModel exactly
    base_path = json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"]
    base, _ = load_model_and_tokenizer(base_path)
    from rlvr.config import LoraSection

    model = apply_lora(base, LoraSection(enabled=True, r=4, alpha=8.0))
    load_adapter_checkpoint(model, ckpt)
    sd = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(sd) == len(a)


@pytest.mark.slow
def test_merged_export_reloads_with_from_pretrained_and_gives_the_same_logits(lora_runs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.cli import main

    straight, _ = lora_runs
    ckpt = straight / "checkpoints" / "step_000004"
    assert main(["export", str(straight), "--to", str(tmp_path / "merged")]) == 0
    assert "merged into its base" in capsys.readouterr().out
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not hasattr(merged, "peft_config")
    tok = AutoTokenizer.from_pretrained(merged_dir)
    ids = tok(["12+7=", "45-9=", "3*4="], return_tensors="pt", padding=True, padding_side="left")
    base_path = json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path)
    with quiet_peft():
        adapted = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), ckpt)
    with torch.no_grad():
        want = adapted(**ids).logits
        got = merged(**ids).logits
        plain = base(**ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(got, plain, atol=1e-4)  # the adapter is in there
    # the adapter alone, in peft's format
    assert main(["export", str(straight), "--to", str(tmp_path / "adapter"), "--adapter-only"]) == 0
    with quiet_peft():
        again = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(again(**ids).logits, want)
    assert (tmp_path / "adapter" / "tokenizer.json").is_file()
    # rlvr eval reads a LoRA run folder (transformers loads the base and the adapter)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(straight), "--json", "eval.num_problems=4"]) == 0
    assert "greedy_accuracy" in capsys.readouterr().out


def test_export_errors_are_one_line(tmp_path, tiny_path, capsys):
    from rlvr.cli import main

    (tmp_path / "full").mkdir()
    cases = [(["export", str(tmp_path / "nope"), "--to", str(tmp_path / "x")], "no such run or checkpoint folder"),
             (["export", str(tiny_path), "--to", str(tmp_path / "y"), "--adapter-only"], "holds full weights"),
             (["export", str(tmp_path), "--to", str(tmp_path / "z")], "neither a run folder")]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    cases.append((["export", str(tiny_path), "--to", str(tmp_path / "busy")], "already exists and is not empty"))
    for argv, needle in cases:
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, (argv, err)
    # a full-weights checkpoint exports as it is
    assert main(["export", str(tiny_path), "--to", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_missing_peft_is_a_one_line_error(monkeypatch, capsys):
    from rlvr.cli import main

    monkeypatch.setitem(sys.modules, "peft", None)
    rc = main(["train", "--config", "configs/grpo_arithmetic_tiny.yaml", "model.lora.enabled=true",
               "model.warm_start=false", "run.output_dir=/nonexistent/never-created"])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "model.lora.enabled needs the peft package" in err and "pip install 'rlvr[lora]'" in err


def test_lora_with_a_reference_reset_is_a_config_error():
    from rlvr.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="kl.reset_every / kl.reset_max_kl with model.lora.enabled"):
        load_config("configs/grpo_arithmetic_tiny.yaml", [*LORA, "kl.placement=loss", "kl.coef=0.1", "kl.reset_every=5"])


def _fast_overrides() -> list[str]:
    """tests/conftest.py's FAST overrides (imported by path: several conftest modules exist)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_rlvr_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.FAST)
