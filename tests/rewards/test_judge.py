"""Generative judges (rlvr.rewards.judge): verdict parsing, the yes/no probability, and LLMJudge on the
Qwen3 stand-in (batched == one row at a time == a forward built by hand), score mode with a generation
we control, template and path errors, and the judge through build_component and RewardPipeline."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlvr.rewards import judge as judge_module
from rlvr.rewards.components import RewardComponentError, RewardPipeline, build_component
from rlvr.rewards.judge import LLMJudge, parse_score, verdict_token_ids, yes_probability

#: The stand-in's BPE vocabulary has no "Yes"/"No" token; these words are single tokens in it.
YES, NO = ("Y", "1"), ("N", "0")
TEMPLATE = "Q: {question}\nReference: {reference}\nA: {answer}\nCorrect? Y or N:"


def problem(prompt: str, answer: str = "5"):
    return SimpleNamespace(prompt=prompt, answer=answer)


PROBLEMS = [problem("What is 2 + 3?"),
            problem("What is 12 * 47? Think step by step about the product and answer with a number.", "564"),
            problem("7-7?", "0")]
TEXTS = ["5", "The result is 563, I think", "0"]


# -- parse_score ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("8", 0.8),
    ("Score: 7/10", 0.7),                 # a fraction: its first number
    ("rating 3.5", 0.35),
    ("Score: 7.25/10", 0.725),
    ("  **9** out of 10", 0.9),
    ("The answer deserves a 10.", 1.0),
    ("0", 0.0),
    ("+3", 0.3),
    ("I'd say 4, maybe 5", 0.4),          # the first number, not the last
    ("GPT4 gives it 6", 0.6),             # digits glued to a word are not a score
    ("12/10", math.nan),                  # the first number is out of range
    ("11", math.nan),
    ("-2", math.nan),                     # negative, below low = 0
    ("no number here", math.nan),
    ("", math.nan),
    (None, math.nan),
])
def test_parse_score_default_range(text, expected):
    got = parse_score(text, 0, 10)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


def test_parse_score_other_ranges():
    assert parse_score("-2", -5, 5) == pytest.approx(0.3)
    assert parse_score("Score:-5", -5, 5) == pytest.approx(0.0)
    assert parse_score(".5", 0, 1) == pytest.approx(0.5)
    assert parse_score("4", 1, 5) == pytest.approx(0.75)
    assert math.isnan(parse_score("0", 1, 5))
    with pytest.raises(ValueError, match="low"):
        parse_score("3", 5, 5)


# -- yes_probability --------------------------------------------------------------------------------------

def test_yes_probability_matches_a_softmax_by_hand():
    logits = [1.0, 2.0, -0.5, 0.3, 3.0]
    exp = [math.exp(x) for x in logits]
    p = [e / sum(exp) for e in exp]
    yes, no = [1, 3], [0, 4]
    expected = (p[1] + p[3]) / (p[1] + p[3] + p[0] + p[4])
    row = torch.tensor(logits, dtype=torch.float64)
    assert yes_probability(row, yes, no) == pytest.approx(expected, abs=1e-12)
    assert yes_probability(logits, [2], [0]) == pytest.approx(p[2] / (p[2] + p[0]), abs=1e-12)  # a plain list
    assert yes_probability(row, [1, 1, 3], no) == pytest.approx(expected, abs=1e-12)  # a repeated id counts once
    assert yes_probability(row.float(), yes, no) == pytest.approx(expected, abs=1e-6)  # float32 logits


def test_yes_probability_is_stable_and_fails_as_nan():
    huge = torch.tensor([1000.0, 999.0, -1000.0, 5.0, 998.0])  # exp overflows; the ratio does not
    assert yes_probability(huge, [0], [1, 4]) == pytest.approx(1 / (1 + math.exp(-1) + math.exp(-2)), abs=1e-12)
    tiny = torch.tensor([-1000.0, -1001.0, 0.0])  # p(yes), p(no) underflow to 0 in a plain softmax
    assert yes_probability(tiny, [0], [1]) == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-12)
    assert math.isnan(yes_probability(torch.tensor([float("nan"), 0.0, 1.0]), [0], [1]))
    with pytest.raises(ValueError, match="both"):
        yes_probability(huge, [0, 1], [1])
    with pytest.raises(ValueError, match="at least one"):
        yes_probability(huge, [], [1])


# -- verdict_token_ids ------------------------------------------------------------------------------------

def test_verdict_token_ids_on_the_stand_in_tokenizer(stand_in):
    from rlvr.models.load import load_tokenizer

    tok = load_tokenizer(stand_in("qwen3_instruct"))
    single = [w for w in ("Y", " answer") if len(tok.encode(w, add_special_tokens=False)) == 1]
    assert single == ["Y", " answer"]
    assert len(tok.encode("Yes", add_special_tokens=False)) > 1
    ids = verdict_token_ids(tok, ["Yes", "Y", " answer", "Y"])  # "Yes" is several tokens: skipped; "Y" once
    assert ids == (tok.encode("Y", add_special_tokens=False)[0], tok.encode(" answer", add_special_tokens=False)[0])
    with pytest.raises(RewardComponentError, match=r"judge\.yes_words.*single token"):
        verdict_token_ids(tok)  # the default words are all split by this tokenizer
    with pytest.raises(RewardComponentError, match=r"judge\.no_words"):
        verdict_token_ids(tok, ("No", " no"), field="no_words")


# -- LLMJudge, yes_no mode ----------------------------------------------------------------------------------

def test_yes_no_equals_a_forward_built_by_hand(stand_in):
    from transformers import AutoModelForCausalLM

    from rlvr.models.load import load_tokenizer

    path = stand_in("qwen3_instruct")
    judge = LLMJudge(name="judge", path=path, template=TEMPLATE, yes_words=YES, no_words=NO)
    assert judge.names == ("judge",) and judge.chat_template  # the stand-in's tokenizer has a ChatML template
    got = judge(PROBLEMS, TEXTS)["judge"]
    assert len(got) == 3 and all(0.0 <= v <= 1.0 for v in got)
    assert len(judge.last_verdicts) == 3 and judge.unparsable == 0 and judge.judged == 3

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = load_tokenizer(path)
    yes = [tok.encode(w, add_special_tokens=False)[0] for w in YES]
    no = [tok.encode(w, add_special_tokens=False)[0] for w in NO]
    for p, text, value in zip(PROBLEMS, TEXTS, got):
        filled = f"Q: {p.prompt}\nReference: {p.answer}\nA: {text}\nCorrect? Y or N:"
        prompt = f"<|im_start|>user\n{filled}<|im_end|>\n<|im_start|>assistant\n"
        assert judge.render(p, text) == prompt
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
        expected = float(probs[yes].sum() / (probs[yes].sum() + probs[no].sum()))
        assert value == pytest.approx(expected, abs=1e-5)


def test_yes_no_batched_equals_one_row_at_a_time(stand_in):
    path = stand_in("qwen3_instruct")
    problems = PROBLEMS + [problem("What is 1 + 1?", "2")] * 2
    texts = TEXTS + ["2, since 1 + 1 = 2", "The answer to 1 + 1 is 2, and 2 is the answer to this question " * 3]
    batched = LLMJudge(name="j", path=path, yes_words=YES, no_words=NO, batch_size=16)
    single = LLMJudge(name="j", path=path, yes_words=YES, no_words=NO, batch_size=1)
    lengths = {len(batched.tokenizer.encode(batched.render(p, t))) for p, t in zip(problems, texts)}
    assert len(lengths) == len(texts)  # every row has its own length: real left padding
    a, b = batched(problems, texts)["j"], single(problems, texts)["j"]
    assert a == pytest.approx(b, abs=1e-5)
    assert len({round(v, 6) for v in a}) > 1  # the rows differ, so the comparison means something
    assert batched.last_verdicts == single.last_verdicts
    assert batched(problems[:0], texts[:0]) == {"j": []}


def test_chat_template_off_or_missing(stand_in, monkeypatch):
    path = stand_in("qwen3_instruct")
    plain = LLMJudge(name="j", path=path, template=TEMPLATE, chat_template=False, yes_words=YES, no_words=NO)
    assert plain.render(PROBLEMS[0], "5") == "Q: What is 2 + 3?\nReference: 5\nA: 5\nCorrect? Y or N:"

    real = judge_module._load_model

    def without_template(*args):
        model, tok = real(*args)
        tok.chat_template = None
        return model, tok

    monkeypatch.setattr(judge_module, "_load_model", without_template)
    auto = LLMJudge(name="j", path=path, template=TEMPLATE, yes_words=YES, no_words=NO)
    assert not auto.chat_template and auto.render(PROBLEMS[0], "5") == plain.render(PROBLEMS[0], "5")
    with pytest.raises(RewardComponentError, match=r"judge\.chat_template = true.*no chat template"):
        LLMJudge(name="j", path=path, chat_template=True, yes_words=YES, no_words=NO)


def test_default_words_that_are_not_single_tokens_fail_at_construction(stand_in):
    with pytest.raises(RewardComponentError, match=r"judge\.yes_words"):
        LLMJudge(name="j", path=stand_in("qwen3_instruct"))
    with pytest.raises(RewardComponentError, match="disjoint"):
        LLMJudge(name="j", path=stand_in("qwen3_instruct"), yes_words=["Y", "1"], no_words=["1"])


# -- LLMJudge, score mode -------------------------------------------------------------------------------------

def _fixed_generation(judge, verdicts: list[str]):
    """Make ``judge.model.generate`` append the tokens of ``verdicts`` (one per row) to the prompts,
    right-padded with the pad token, as HF's generate returns them."""
    tok = judge.tokenizer
    seen = []

    def generate(input_ids, attention_mask, generation_config):
        seen.append((input_ids.shape, generation_config))
        rows = [tok.encode(v, add_special_tokens=False) for v in verdicts[:input_ids.shape[0]]]
        del verdicts[:input_ids.shape[0]]
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    judge.model.generate = generate
    return seen


def test_score_mode_parses_the_generated_verdicts(stand_in):
    judge = LLMJudge(name="grade", path=stand_in("qwen3_instruct"), mode="score", low=0, high=10,
                     max_new_tokens=5, batch_size=2)
    assert "from 0 (wrong) to 10" in judge.fill(PROBLEMS[0], "5")  # the default template's {low}, {high}
    seen = _fixed_generation(judge, ["Score: 7/10", "no idea", "12"])
    got = judge(PROBLEMS, TEXTS)["grade"]
    assert got[0] == pytest.approx(0.7) and math.isnan(got[1]) and math.isnan(got[2])
    assert judge.last_verdicts == ["Score: 7/10", "no idea", "12"]
    assert judge.unparsable == 2 and judge.judged == 3
    assert [s[0][0] for s in seen] == [2, 1]  # batches of batch_size
    config = seen[0][1]
    assert config.do_sample is False and config.max_new_tokens == 5

    _fixed_generation(judge, ["8", "3.5 out of 10", "<|im_end|>"])  # a verdict that is only the end token
    got = judge(PROBLEMS, TEXTS)["grade"]
    assert got[:2] == pytest.approx([0.8, 0.35]) and math.isnan(got[2])
    assert judge.unparsable == 3 and judge.judged == 6


def test_score_mode_greedy_generation_runs_on_the_stand_in(stand_in):
    judge = LLMJudge(name="grade", path=stand_in("qwen3_instruct"), mode="score", max_new_tokens=3)
    got = judge(PROBLEMS[:2], TEXTS[:2])["grade"]
    assert len(got) == 2 and len(judge.last_verdicts) == 2
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in got)
    assert judge.unparsable == sum(math.isnan(v) for v in got)


# -- construction errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"template": "Q: {questoin} A: {answer}"}, r"judge\.template: unknown placeholder\(s\) \{questoin\}"),
    ({"template": "Q: {} A: {answer}"}, r"judge\.template: unknown placeholder"),
    ({"template": "{question} scored {low}: {answer}"}, r"unknown placeholder\(s\) \{low\}; in mode 'yes_no'"),
    ({"template": "Q: {question}"}, r"judge\.template: has no \{answer\}"),
    ({"template": "Q: {question A: {answer}"}, r"judge\.template: .*literal brace"),
    ({"mode": "rank"}, r"judge\.mode = 'rank'"),
    ({"mode": "score", "low": 5, "high": 5}, r"judge\.low = 5, judge\.high = 5"),
    ({"dtype": "float33"}, r"judge\.dtype = 'float33'"),
    ({"batch_size": 0}, r"judge\.batch_size = 0"),
    ({"path": "policy"}, r"path: policy needs the policy's starting checkpoint"),
    ({"path": "builtin:tiny"}, r"'builtin:tiny' is not a checkpoint"),
])
def test_bad_arguments_fail_before_anything_is_loaded(kwargs, message, monkeypatch):
    def no_load(*args):
        raise AssertionError("loaded a model before checking the arguments")

    monkeypatch.setattr(judge_module, "_load_model", no_load)
    with pytest.raises(RewardComponentError, match=message):
        LLMJudge(**{"name": "j", "path": "/nowhere", **kwargs})


def test_score_templates_may_use_low_and_high_and_escaped_braces(monkeypatch, stand_in):
    judge = LLMJudge(name="j", path=stand_in("qwen3_instruct"), mode="score", low=1, high=5,
                     template="{{json}} {question} -> {answer} in [{low}, {high}]")
    assert judge.fill(problem("2+2"), "4") == "{json} 2+2 -> 4 in [1, 5]"
    with pytest.raises(ValueError, match=r"\{reference\}.*no answer"):
        LLMJudge(name="j", path=stand_in("qwen3_instruct"), mode="score").fill(problem("2+2", None), "4")


# -- path: policy, build_component, RewardPipeline -----------------------------------------------------------------

def test_path_policy_resolves_to_the_policy_checkpoint(stand_in):
    path = stand_in("qwen3_instruct")
    judge = LLMJudge(name="j", path="policy", policy_path=path, yes_words=YES, no_words=NO)
    assert judge.path == path
    spec = {"type": "judge", "name": "self_judge", "path": "policy", "yes_words": list(YES), "no_words": list(NO),
            "batch_size": 2}
    built = build_component(spec, policy_path=path, device="cpu", unrelated="ignored")
    assert isinstance(built, LLMJudge) and built.path == path and built.names == ("self_judge",)
    assert built(PROBLEMS, TEXTS)["self_judge"] == pytest.approx(judge(PROBLEMS, TEXTS)["j"], abs=1e-5)
    with pytest.raises(RewardComponentError, match="path: policy needs"):
        build_component(spec)
    with pytest.raises(RewardComponentError, match=r"unknown field\(s\) temperature"):
        build_component({**spec, "temperature": 0.5}, policy_path=path)


def test_an_unparsable_verdict_is_a_counted_failure_in_the_pipeline(stand_in):
    judge = build_component({"type": "judge", "name": "grade", "path": stand_in("qwen3_instruct"),
                             "mode": "score", "max_new_tokens": 4})
    pipeline = RewardPipeline([judge], on_failure="zero")
    _fixed_generation(judge, ["9", "I cannot say", "Score: 2"])
    out, seconds = pipeline(PROBLEMS, TEXTS)
    assert out["grade"].tolist() == pytest.approx([0.9, 0.0, 0.2])
    assert out["reward_failures"].tolist() == [0.0, 1.0, 0.0]
    assert pipeline.failures == {"grade": 1} and judge.unparsable == 1
    assert seconds["grade"] >= 0.0

    stop = RewardPipeline([judge], on_failure="stop", max_failures=0)
    _fixed_generation(judge, ["9", "nothing", "1"])
    with pytest.raises(RewardComponentError, match="grade"):
        stop(PROBLEMS, TEXTS)
