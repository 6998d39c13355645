"""The warm start's stopping rule: a target accuracy on a validation split carved from the train split."""

import json

import torch

import pytest

from rlvr.config import ConfigError, load_config
from rlvr.models.tiny import build_char_tokenizer, build_tiny_model
from rlvr.tasks import make_task
from rlvr.warmstart import sft as S

SMALL_ARCH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2)


@pytest.fixture(scope="module")
def task():
    return make_task("arithmetic", min_digits=1, max_digits=2, ops="+-", num_train=2000, num_eval=50)


def _small(seed=0):
    tok = build_char_tokenizer()
    return build_tiny_model(tok, seed=seed, **SMALL_ARCH), tok


def _fake(accuracies):
    """A validate() that returns the given accuracies in turn (and counts its calls)."""
    it = iter(accuracies)

    def validate():
        validate.calls += 1
        return next(it)
    validate.calls = 0
    return validate


def _train(task, steps, **kw):
    model, tok = _small()
    return S.train_sft(model, tok, task, steps, 1e-3, 4, 2, progress=False, **kw)


def test_stops_at_the_first_check_that_reaches_the_target(task):
    validate = _fake([0.1, 0.3, 0.5, 0.9, 0.9])
    out = _train(task, 20, validate=validate, eval_every=2, target_accuracy=0.5)
    assert out.steps == 6 and out.reached_target is True  # 0.5 >= 0.5 at the third check (step 6)
    assert [c["step"] for c in out.checks] == [2, 4, 6] and out.val_accuracy == 0.5
    assert validate.calls == 3


def test_the_cap_is_respected_and_measured_when_the_target_is_never_reached(task):
    validate = _fake([0.1, 0.2, 0.3])
    out = _train(task, 7, validate=validate, eval_every=3, target_accuracy=0.9)
    assert out.steps == 7 and out.reached_target is False
    assert [c["step"] for c in out.checks] == [3, 6, 7]  # one last check at the cap
    assert out.val_accuracy == 0.3


def test_without_a_target_every_step_runs_and_checks_do_not_change_training(task):
    plain = _train(task, 6)
    watched = _train(task, 6, validate=_fake([1.0] * 3), eval_every=2)
    assert plain.steps == watched.steps == 6 and plain.reached_target is None
    assert plain.losses == watched.losses  # a check leaves the training RNG stream as it was
    assert [c["step"] for c in watched.checks] == [2, 4, 6]
    with pytest.raises(ValueError, match="target_accuracy needs validate"):
        _train(task, 2, target_accuracy=0.5)


def test_validation_split_is_disjoint_from_sft_training_and_eval(task):
    val, train = S.validation_split(task, 100)
    val_prompts = {p.prompt for p in val}
    assert len(val) == len(val_prompts) == 100
    assert not val_prompts & {p.prompt for p in train}
    assert not val_prompts & {p.prompt for p in task.problems("eval")}
    assert not any(task.is_eval_prompt(p) for p in val_prompts)
    full = task.problems("train")
    assert all(S.is_validation_prompt(p) for p in val_prompts)
    # every train problem on the validation side is left out (not only the chosen ones); order is kept
    assert train == [p for p in full if not S.is_validation_prompt(p.prompt)]
    assert 0.8 * len(full) < len(train) < len(full)
    # the validation problems are the first distinct validation-side prompts of the train split
    side = [p.prompt for p in full if S.is_validation_prompt(p.prompt)]
    assert [p.prompt for p in val] == list(dict.fromkeys(side))[:100]
    # deterministic: a fresh task instance carves the same prompts, in the same order
    again = make_task("arithmetic", min_digits=1, max_digits=2, ops="+-", num_train=2000, num_eval=50)
    assert [p.prompt for p in S.validation_split(again, 100)[0]] == [p.prompt for p in val]
    # a tiny problem space gives what its validation side holds
    tiny = make_task("arithmetic", max_digits=1, ops="+", num_train=500, num_eval=20)
    small_val, small_train = S.validation_split(tiny, 500)
    assert 1 <= len(small_val) < 50 and small_train


def test_greedy_accuracy_scores_exact_answers(task):
    model, tok = _small()
    acc = S.greedy_accuracy(model, tok, task, task.problems("eval", 10))
    assert 0.0 <= acc <= 1.0
    assert S.greedy_accuracy(model, tok, task, []) == 0.0


def test_config_fields_validate_and_the_recipe_uses_the_target():
    cfg = load_config(None)
    assert cfg.sft.target_accuracy is None  # the plain default keeps the fixed-step rule
    for bad in ("sft.target_accuracy=0", "sft.target_accuracy=1.5", "sft.eval_every=0", "sft.val_problems=0"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])
    assert load_config(None, ["sft.target_accuracy=0.5", "sft.target_accuracy=null"]).sft.target_accuracy is None
    recipe = load_config("configs/grpo_arithmetic_tiny.yaml").sft
    assert recipe.target_metric == "reference_probability" and 0.3 <= recipe.target_accuracy <= 0.5
    assert recipe.steps >= 10 * recipe.eval_every


def test_cache_key_changes_with_the_rule_parameters():
    def key(*overrides):
        cfg = load_config(None, list(overrides))
        return S.warm_start_key(cfg.task.name, cfg.task.options, S.sft_key_fields(cfg.sft), {})

    # without a target the key is the one the fixed-step rule always had (old caches stay valid for it)
    assert set(S.sft_key_fields(load_config(None).sft)) == {"steps", "lr", "batch_size", "warmup_steps", "seed"}
    on = S.sft_key_fields(load_config(None, ["sft.target_accuracy=0.5"]).sft)
    assert on["target_accuracy"] == 0.5 and on["stop_rule"] == S.STOP_RULE
    assert {"eval_every", "val_problems"} <= set(on)
    keys = [key(), key("sft.target_accuracy=0.5"), key("sft.target_accuracy=0.4"),
            key("sft.target_accuracy=0.5", "sft.eval_every=10"),
            key("sft.target_accuracy=0.5", "sft.val_problems=200"),
            key("sft.target_accuracy=0.5", "sft.steps=900")]
    assert len(set(keys)) == len(keys)
    # the eval_every / val_problems options do not matter (nor key) while there is no target
    assert key("sft.eval_every=10") == key()


def test_warm_start_writes_and_reuses_its_record(tmp_path, monkeypatch, task):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path))
    cfg = load_config(None, ["sft.steps=6", "sft.batch_size=8", "sft.warmup_steps=2",
                             "sft.target_accuracy=0.99", "sft.eval_every=3", "sft.val_problems=20"]).sft
    opts = {"num_train": 2000, "num_eval": 50}
    logs = []
    path = S.warm_start(task, "arithmetic", opts, cfg, progress=False, log=logs.append)
    record = S.warm_start_record(path)
    assert record == json.loads((path / S.RECORD_FILE).read_text())
    assert record["rule"] == S.STOP_RULE and record["key"] == path.name
    assert record["steps"] == 6 and record["max_steps"] == 6 and record["reached_target"] is False
    assert [c["step"] for c in record["checks"]] == [3, 6] and record["val_problems"] == 20
    assert record["val_accuracy"] == record["checks"][-1]["val_accuracy"]
    assert record["target_accuracy"] == 0.99 and record["built_with"]["threads"] >= 1
    assert any("stopped at the cap (sft.steps=6) below the target" in line for line in logs)
    # a second call finds the cache and trains nothing
    assert S.warm_start(task, "arithmetic", opts, cfg, progress=False, log=logs.append) == path
    assert any("using cached" in line for line in logs[-2:])
    # the fixed-step rule writes a record too; a folder without one (an old cache) gives None
    fixed = S.warm_start(task, "arithmetic", opts, cfg.model_copy(update={"target_accuracy": None}),
                         progress=False, log=logs.append)
    assert fixed != path and S.warm_start_record(fixed)["rule"] == "fixed-steps"
    assert S.warm_start_record(fixed)["steps"] == 6 and S.warm_start_record(fixed)["checks"] == []
    assert S.warm_start_record(tmp_path / "nowhere") is None
    assert S.warm_start_record(str(path)) == record  # a str path reads the same record


def test_sft_to_saves_a_plain_hf_folder_that_loads_like_any_model(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.cli import main

    monkeypatch.setenv("RLVR_CACHE", str(tmp_path / "cache"))
    small = ["sft.steps=4", "sft.batch_size=8", "sft.warmup_steps=1", "logging.progress=false"]
    assert main(["sft", "--config", "configs/grpo_dataset_tiny.yaml", "--to", str(tmp_path / "my_model"), *small]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == str(tmp_path / "my_model") and "exported" in err
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "my_model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "my_model")
    cached = next((tmp_path / "cache" / "warmstart").iterdir())
    ref = AutoModelForCausalLM.from_pretrained(cached)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name
    assert tok("12+7=")["input_ids"]
    # an existing non-empty folder is refused in one line, exit 2
    assert main(["sft", "--config", "configs/grpo_dataset_tiny.yaml", "--to", str(tmp_path / "my_model"), *small]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_reference_probability_is_the_chance_of_sampling_exactly_the_reference(task):
    # independent computation: token by token, one unpadded prompt at a time, softmax of the next-token logits
    model, tok = _small(seed=4)
    model.eval()
    problems = task.problems("train")[:5]
    want = []
    with torch.no_grad():
        for p in problems:
            ids = tok(p.prompt, return_tensors="pt")["input_ids"][0].tolist()
            target = tok(task.format_sft_target(p), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            prob = 1.0
            for t in target:
                probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
                prob *= probs[t].item()
                ids.append(t)
            want.append(prob)
    got = S.reference_probability(model, tok, task, problems, batch_size=2)
    assert abs(got - sum(want) / len(want)) < 1e-6 * max(1.0, got), (got, want)
    assert 0.0 < got < 1.0


def test_the_stopping_metric_is_chosen_by_name_and_keys_the_cache():
    assert set(S.VALIDATION_METRICS) == {"greedy_accuracy", "reference_probability"}
    base = ["sft.target_accuracy=0.3"]
    greedy = S.sft_key_fields(load_config(None, base).sft)
    ref = S.sft_key_fields(load_config(None, [*base, "sft.target_metric=reference_probability"]).sft)
    assert "target_metric" not in greedy and ref["target_metric"] == "reference_probability"
    with pytest.raises(ConfigError, match="target_metric"):
        load_config(None, [*base, "sft.target_metric=loss"])
