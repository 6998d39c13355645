"""The scalar-head reward model: its read-out equals HF's head output, Bradley-Terry training raises held-out
pair accuracy on a synthetic preference set, and the ``reward_model`` component scores what the model says."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from rlvr.models.tiny import save_tiny
from rlvr.rewards.components import RewardComponentError, RewardPipeline, build_component
from rlvr.rewards.reward_model import (RM_RECORD, load_reward_model, pairs_from_rows, rm_scores, rm_text,
                                       save_reward_model, train_reward_model)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "m"))


def _hf_head(model, tok, text):
    enc = tok([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return float(model(**enc).logits[0, 0])


def test_read_out_is_the_head_at_the_last_token_with_padding(tiny_path):
    model, tok = load_reward_model(tiny_path)
    texts = ["1+1=2", "12+30=42 because", "7*8=56", "x"]
    batched = rm_scores(model, tok, texts, batch_size=4)
    for text, got in zip(texts, batched):  # one text at a time, no padding: HF's own pooled logit
        assert got == pytest.approx(_hf_head(model, tok, text), abs=1e-5)


def test_read_out_on_a_chat_model_whose_pad_is_its_eos(stand_in):
    """The Qwen3 stand-in pads with <|im_end|>, which also ends every assistant turn: the read-out must take
    the last token of the text, not the token before the first pad-id."""
    model, tok = load_reward_model(stand_in("qwen3_instruct"))
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|im_end|>") or tok.pad_token_id is not None
    texts = [rm_text(tok, "What is 2+2?", "4"), rm_text(tok, "Name a colour.", "Blue, like the sea")]
    assert "<|im_start|>assistant" in texts[0]
    batched = rm_scores(model, tok, texts, batch_size=2)
    for text, got in zip(texts, batched):
        enc = tok([text], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            h = model.model(**enc).last_hidden_state[0, -1]
            assert got == pytest.approx(float(model.score(h)), abs=1e-5)


def test_too_long_and_empty_texts_score_nan(tiny_path):
    model, tok = load_reward_model(tiny_path)
    out = rm_scores(model, tok, ["", "1+1=2", "9" * 50], max_length=20)
    assert math.isnan(out[0]) and math.isfinite(out[1]) and math.isnan(out[2])


def _synthetic_pairs(n, seed):
    """Preference: a completion that ends with a vowel beats one that ends with a consonant (each drawn at
    random from five, so an untrained head orders about half the pairs right)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        rows.append({"prompt": f"{a}+{b}=", "chosen": f"{a + b}{rng.choice('aeiou')}",
                     "rejected": f"{a + b}{rng.choice('bcdfg')}"})
    return pairs_from_rows(rows)


def test_bradley_terry_training_raises_held_out_pair_accuracy(tiny_path, tmp_path):
    torch.manual_seed(0)
    model, tok = load_reward_model(tiny_path)
    record = train_reward_model(model, tok, _synthetic_pairs(96, 0), _synthetic_pairs(48, 1), epochs=2, lr=3e-4,
                                batch_size=16, log=lambda s: None)
    assert record["held_out_accuracy"] >= 0.9 and record["held_out_accuracy_before"] < 0.75
    assert record["held_out_loss"] < record["held_out_loss_before"]
    out = save_reward_model(model, tok, record, tmp_path / "rm")
    saved = json.loads((out / RM_RECORD).read_text())
    assert saved["calibration"]["std"] > 0
    # the component scores what the saved model's head says, and calibrated scores use the record
    problems = [SimpleNamespace(prompt="3+4=", answer="7", meta={})] * 2
    comp = build_component({"type": "reward_model", "name": "rm", "path": str(out)})
    raw = comp(problems, ["7a", "7b"])["rm"]
    assert raw[0] > raw[1]
    assert raw[0] == pytest.approx(_hf_head(comp.model, comp.tokenizer, "3+4=7a"), abs=1e-5)
    cal = build_component({"type": "reward_model", "name": "rm", "path": str(out), "normalize": "calibrated"})
    got = cal(problems, ["7a", "7b"])["rm"]
    c = saved["calibration"]
    assert got[0] == pytest.approx((raw[0] - c["mean"]) / c["std"], abs=1e-5)
    z = build_component({"type": "reward_model", "name": "rm", "path": str(out), "normalize": "batch"})(
        problems, ["7a", "7b"])["rm"]
    assert z[0] == pytest.approx(-z[1], abs=1e-4) and z[0] > 0


def test_reward_model_component_errors(tiny_path, tmp_path):
    with pytest.raises(RewardComponentError, match="normalize"):
        build_component({"type": "reward_model", "name": "rm", "path": tiny_path, "normalize": "zscore"})
    with pytest.raises(RewardComponentError, match="rlvr_rm.json"):
        build_component({"type": "reward_model", "name": "rm", "path": tiny_path, "normalize": "calibrated"})
    with pytest.raises(RewardComponentError, match="cannot load"):
        build_component({"type": "reward_model", "name": "rm", "path": str(tmp_path / "none")})
    with pytest.raises(RewardComponentError, match="unknown field"):
        build_component({"type": "reward_model", "name": "rm", "path": tiny_path, "temperature": 1})
    with pytest.raises(RewardComponentError, match="missing field"):
        build_component({"type": "reward_model", "name": "rm"})
    with pytest.raises(RewardComponentError, match="prompt, chosen, rejected"):
        pairs_from_rows([{"prompt": "a", "chosen": "b"}])


def test_a_text_the_reward_model_cannot_score_is_a_counted_failure(tiny_path):
    comp = build_component({"type": "reward_model", "name": "rm", "path": tiny_path, "max_length": 8})
    pipe = RewardPipeline([comp], on_failure="zero")
    problems = [SimpleNamespace(prompt="1+1=", answer="2", meta={})] * 2
    out, seconds = pipe(problems, ["2", "2222222222222"])
    assert out["rm"][1] == 0.0 and out["reward_failures"].tolist() == [0.0, 1.0]
    assert pipe.failures["rm"] == 1 and seconds["rm"] >= 0
    stop = RewardPipeline([comp], on_failure="stop", max_failures=0)
    with pytest.raises(RewardComponentError, match="max_failures"):
        stop(problems, ["2", "2222222222222"])
    drop = RewardPipeline([comp], on_failure="drop_group")
    out, _ = drop(problems * 2, ["2", "2", "2", "2222222222222"], group=torch.tensor([0, 0, 1, 1]))
    assert out["reward_failed_group"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_a_chat_reward_model_and_judge_see_the_question_not_the_policys_rendered_prompt(stand_in, tmp_path):
    """The dataset task renders its prompts with the policy's chat template; a reward model or judge with its own
    template must be shown the user's question once, not the rendered prompt wrapped in a second template."""
    from rlvr.rewards.components import question_of
    from rlvr.tasks import make_task

    path = stand_in("qwen3_instruct")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2+2?", "answer": "4"}) + "\n")
    problem = make_task("dataset", path=str(data), tokenizer=path, eval_fraction=0.0,
                        instruction="Answer with a number.").problems("train")[0]
    assert problem.prompt.count("<|im_start|>") >= 2  # the policy's rendered prompt
    assert question_of(problem) == "What is 2+2?\n\nAnswer with a number."
    rm = build_component({"type": "reward_model", "name": "rm", "path": path})
    text = rm.texts([problem], ["4"])[0]
    assert text.count("<|im_start|>user") == 1 and "What is 2+2?\n\nAnswer with a number." in text
    judge = build_component({"type": "judge", "name": "j", "path": path, "yes_words": ["Y"], "no_words": ["N"]})
    shown = judge.render(problem, "4")
    assert shown.count("<|im_start|>user") == 1 and "What is 2+2?" in shown
    # a judge prompt longer than the judge's context is a counted failure, not a silently cut prompt
    judge.model.config.max_position_embeddings = len(judge.tokenizer(shown)["input_ids"]) - 1
    assert math.isnan(judge([problem], ["4"])["j"][0]) and judge.unparsable == 1
