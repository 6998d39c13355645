"""README's "Bring your own model" commands, run on a real-architecture stand-in (Qwen3-shaped, byte-level
BPE, ChatML) in both eos conventions: sft --to from model.path, train with lean, hf and LoRA, export,
eval of the export with the LoRA config, resume. Small step counts; what is checked is that each
command does what it says on a real chat model, not that the random model learns."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from rlvr.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: a run of seconds on the stand-in
SMALL = ["trainer.steps=3", "trainer.warmup_steps=0", "rollout.prompts_per_step=4", "rollout.group_size=4",
         "trainer.num_minibatches=1", "eval.num_problems=6", "eval.samples_per_problem=2",
         "logging.progress=false", "logging.plots=false", "logging.checkpoint_every=1", "logging.report_to=[]",
         "task.options.num_train=200", "task.options.num_eval=20"]
SFT_SMALL = ["sft.steps=4", "sft.target_accuracy=null", "sft.batch_size=8", "sft.warmup_steps=1"]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name examples/... relative to a clone


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["qwen3_instruct", "qwen3_base"])
def test_readme_bring_your_own_model_on_a_real_architecture(stand_in, tmp_path, capsys, name):
    user = stand_in(name)
    runs = tmp_path / "runs"
    # 1. rlvr sft --to: starts from model.path (the user's model), not the built-in one
    my_model = tmp_path / "my_model"
    out = _run(["sft", "--config", "configs/grpo_dataset_tiny.yaml", f"model.path={user}", *SFT_SMALL,
                "task.options.num_train=200", "logging.progress=false", "--to", str(my_model)], capsys)
    assert out.out.strip() == str(my_model)
    config = json.loads((my_model / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["hidden_size"] == 64
    for f in TOKENIZER_FILES:  # the user's tokenizer, byte for byte
        assert (my_model / f).read_bytes() == (Path(user) / f).read_bytes()
    assert "<|im_end|>" in out.err  # targets end with the template's end of turn, whatever eos is

    # 2. train with LoRA (lean engine, the default), then the hf engine, then full fine-tuning
    for engine, cfg in (("lean", "grpo_dataset_lora_tiny"), ("hf", "grpo_dataset_lora_tiny"), ("lean", "grpo_dataset_tiny")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _run(["train", "--config", f"configs/{cfg}.yaml", f"model.path={my_model}", f"rollout.engine={engine}",
                  f"run.output_dir={runs}", f"run.name={cfg}_{engine}", *SMALL], capsys)
        run_dir = runs / f"{cfg}_{engine}"
        steps = [r for r in _records(run_dir) if "truncated_frac" in r]
        assert len(steps) == 3
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        assert samples and all(s["finish_reason"] in ("stop", "length") for s in samples)
        assert all("<|im_start|>assistant" in s["prompt"] for s in samples)  # the chat template was applied
        # the zero-variance advice never tells a user's model to warm-start longer
        assert not any("sft.steps" in str(w.message) for w in caught)
        ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
        for f in TOKENIZER_FILES:
            assert (ckpt / f).read_bytes() == (Path(user) / f).read_bytes()

    # 3. export the LoRA run: the adapter merged into a plain HF folder with the user's tokenizer
    my_model_rl = tmp_path / "my_model_rl"
    _run(["export", str(runs / "grpo_dataset_lora_tiny_lean"), "--to", str(my_model_rl)], capsys)
    for f in TOKENIZER_FILES:
        assert (my_model_rl / f).read_bytes() == (Path(user) / f).read_bytes()

    # 4. eval with the LoRA config (whose model.path is builtin:tiny): the checkpoint's own template renders
    out = _run(["eval", "--checkpoint", str(my_model_rl), "--config", "configs/grpo_dataset_lora_tiny.yaml", "--json",
                "eval.num_problems=6", "eval.samples_per_problem=2", "logging.progress=false"], capsys)
    result = json.loads(out.out)
    assert result["engine"] == "lean" and 0.0 <= result["truncated_frac"] <= 1.0
    from rlvr.cli.eval import checkpoint_config
    from rlvr.tasks import make_task

    cfg = checkpoint_config("configs/grpo_dataset_lora_tiny.yaml", [], my_model_rl)
    prompt = make_task(cfg.task.name, **cfg.task.options).problems("eval", 1)[0].prompt
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")

    # 5. resume: a run stopped after step 1 continues to its last step from its checkpoint
    from rlvr.config import load_config
    from rlvr.train.loop import train

    cfg = load_config("configs/grpo_dataset_lora_tiny.yaml", [f"model.path={my_model}", f"run.output_dir={runs}",
                                                              "run.name=resumed", *SMALL])
    assert train(cfg, stop_after=1, log=lambda *_: None) is None
    _run(["train", "--resume", str(runs / "resumed")], capsys)
    assert [r["step"] for r in _records(runs / "resumed") if "truncated_frac" in r] == [1, 2, 3]


def test_eval_of_a_checkpoint_scores_as_training_does(stand_in, tmp_path, capsys):
    """One sampler decides a checkpoint's score: rlvr eval uses rollout.engine, so the held-out numbers of
    a run's final checkpoint equal the run's own final evaluation."""
    user = stand_in("qwen3_base")
    runs = tmp_path / "runs"
    _run(["train", "--config", "configs/grpo_dataset_tiny.yaml", f"model.path={user}", f"run.output_dir={runs}",
          "run.name=r", *SMALL], capsys)
    last = [r for r in _records(runs / "r") if "eval/greedy_accuracy" in r][-1]
    out = _run(["eval", "--checkpoint", str(runs / "r"), "--json"], capsys)
    result = json.loads(out.out)
    for key in ("greedy_accuracy", "sampled_reward", "response_length", "truncated_frac"):
        assert result[key] == pytest.approx(last[f"eval/{key}"]), key


def test_sft_of_a_non_builtin_model_needs_to(stand_in, capsys):
    code = main(["sft", "--config", "configs/grpo_dataset_tiny.yaml", f"model.path={stand_in('qwen3_instruct')}"])
    err = capsys.readouterr().err
    assert code == 2 and "needs --to DIR" in err
