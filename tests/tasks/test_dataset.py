"""The dataset task: every source format, the chat template, the split, each verifier by name."""

from __future__ import annotations

import csv
import json

import pytest

from rlvr.tasks import DatasetTask, make_task
from rlvr.tasks.dataset import load_rows

ROWS = [{"prompt": f"What is {a}+{b}?", "answer": str(a + b), "level": a % 3} for a in range(12) for b in range(5)]

#: A tiny chat template for the built-in character tokenizer (printable ASCII only).
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


def write(tmp_path, fmt, rows=ROWS, name="data"):
    if fmt == "jsonl":
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        datasets = pytest.importorskip("datasets")
        path = tmp_path / f"{name}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "hf":
        datasets = pytest.importorskip("datasets")
        path = tmp_path / f"{name}_hf"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    elif fmt == "hf_dict":
        datasets = pytest.importorskip("datasets")
        path = tmp_path / f"{name}_hfdict"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:40]),
                              "test": datasets.Dataset.from_list(rows[40:])}).save_to_disk(str(path))
    return path


@pytest.fixture
def chat_tokenizer(tmp_path):
    """The built-in tokenizer with a chat template written into it, saved as a folder."""
    from rlvr.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = TEMPLATE
    folder = tmp_path / "chat_tok"
    tok.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "hf"])
def test_every_format_gives_the_same_problems(tmp_path, fmt):
    reference = DatasetTask(path=str(write(tmp_path, "jsonl", name="ref")))
    task = DatasetTask(path=str(write(tmp_path, fmt)))
    for split in ("train", "eval"):
        got = [(p.prompt, p.answer) for p in task.problems(split)]
        assert got == [(p.prompt, p.answer) for p in reference.problems(split)]
    assert len(task.problems("train")) + len(task.problems("eval")) == len(ROWS)
    row = task.problems("train")[0].meta["row"]
    assert set(row) == {"prompt", "answer", "level"}  # every column travels with the problem


def test_dataset_dict_splits(tmp_path):
    path = write(tmp_path, "hf_dict")
    task = DatasetTask(path=str(path), eval_split="test")
    assert len(task.problems("train")) == 40 and len(task.problems("eval")) == len(ROWS) - 40
    with pytest.raises(ValueError, match="has no split 'validation'; its splits: train, test"):
        DatasetTask(path=str(path), eval_split="validation")


def test_make_task_and_config_path(tmp_path):
    from rlvr.config import load_config

    path = write(tmp_path, "jsonl")
    config = load_config("configs/grpo_arithmetic_tiny.yaml", ["task.name=dataset", f"task.options.path={path}"])
    assert config.task.options == {"path": str(path), "tokenizer": "builtin:tiny"}  # filled from model.path
    task = make_task(config.task.name, **config.task.options)
    assert isinstance(task, DatasetTask) and task.name == "dataset"


@pytest.mark.parametrize("options, message", [
    ({}, "needs task.options.path"),
    ({"path": "nope.jsonl"}, "dataset file 'nope.jsonl' does not exist"),
    ({"path": "{tmp}/data.txt"}, "cannot tell its format"),
    ({"path": "{jsonl}", "answer_field": "solution"}, "row 0 of .* has no 'solution' column .*its columns: prompt, answer, level"),
    ({"path": "{jsonl}", "prompt_field": "question"}, "has no 'question' column"),
    ({"path": "{jsonl}", "verifier": "fuzzy"}, "unknown verifier 'fuzzy'; known: code, exact, math, regex, none"),
    ({"path": "{jsonl}", "verifier": "exact", "verifier_options": {"pattern": "x"}}, "unknown option.*'pattern'.*allowed: extract, ignore_case"),
    ({"path": "{jsonl}", "verifier": "code"}, "verifier .code. is not wired into the dataset task yet"),
    ({"path": "{jsonl}", "verifier": "none"}, "verifier 'none' needs reward_functions"),
    ({"path": "{jsonl}", "chat_template": True}, "chat_template=true needs task.options.tokenizer"),
    ({"path": "{jsonl}", "chat_template": True, "tokenizer": "builtin:tiny"}, "has no chat template"),
    ({"path": "{jsonl}", "eval_fraction": 1.0}, "eval_fraction must lie in"),
])
def test_errors_are_one_line(tmp_path, options, message):
    jsonl = write(tmp_path, "jsonl")
    (tmp_path / "data.txt").write_text("x")
    options = {k: v.format(tmp=tmp_path, jsonl=jsonl) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(ValueError, match=message) as err:
        DatasetTask(**options)
    assert "\n" not in str(err.value)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load_rows(path)


# --------------------------------------------------------------------------- prompts and chat template


def test_plain_prompt_with_system_prompt_and_instruction(tmp_path):
    task = DatasetTask(path=str(write(tmp_path, "jsonl")), system_prompt="Be brief.", instruction="Answer:")
    p = task.problems("train")[0]
    assert p.prompt == f"Be brief.\n\n{p.meta['row']['prompt']}\n\nAnswer:"
    assert not task.uses_chat_template


def test_chat_template_is_applied_with_one_bos(tmp_path, chat_tokenizer):
    from transformers import AutoTokenizer

    task = DatasetTask(path=str(write(tmp_path, "jsonl")), tokenizer=str(chat_tokenizer), system_prompt="Be brief.")
    assert task.uses_chat_template
    p = task.problems("train")[0]
    question = p.meta["row"]["prompt"]
    # add_generation_prompt=True: the text ends where the assistant's turn begins
    assert p.prompt == f"[system] Be brief.\n[user] {question}\n[assistant] "
    tok = AutoTokenizer.from_pretrained(chat_tokenizer)
    ids = tok(p.prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # the template's BOS is not doubled
    off = DatasetTask(path=str(write(tmp_path, "jsonl")), tokenizer=str(chat_tokenizer), chat_template=False)
    assert off.problems("train")[0].prompt == question


def test_conversational_rows(tmp_path, chat_tokenizer):
    rows = [{"prompt": [{"role": "user", "content": f"{a}+1?"}], "answer": str(a + 1)} for a in range(30)]
    path = write(tmp_path, "jsonl", rows)
    task = DatasetTask(path=str(path), tokenizer=str(chat_tokenizer), eval_fraction=0.0)
    p = task.problems("train")[0]
    assert p.prompt == "[user] 0+1?\n[assistant] " and p.meta["conversational"]
    with pytest.raises(ValueError, match="holds chat messages, but there is no chat template"):
        DatasetTask(path=str(path), tokenizer="builtin:tiny")


def test_config_fills_the_tokenizer_from_model_path(tmp_path, chat_tokenizer):
    from rlvr.config import load_config

    path = write(tmp_path, "jsonl")
    config = load_config(None, ["task.name=dataset", f"task.options.path={path}", f"model.path={chat_tokenizer}"])
    task = make_task(config.task.name, **config.task.options)
    assert config.task.options["tokenizer"] == str(chat_tokenizer) and task.uses_chat_template


# --------------------------------------------------------------------------- split


def test_hash_split_is_stable_and_disjoint(tmp_path):
    rows = ROWS + ROWS[:10]  # duplicates of a prompt stay on one side
    a = DatasetTask(path=str(write(tmp_path, "jsonl", rows)), eval_fraction=0.25)
    b = DatasetTask(path=str(write(tmp_path, "json", rows)), eval_fraction=0.25)
    train, evals = {p.prompt for p in a.problems("train")}, {p.prompt for p in a.problems("eval")}
    assert not train & evals and len(train | evals) == len(ROWS)
    assert [p.prompt for p in a.problems("eval")] == [p.prompt for p in b.problems("eval")]
    assert 0.1 < len(evals) / len(ROWS) < 0.4
    small = DatasetTask(path=str(write(tmp_path, "jsonl", rows)), eval_fraction=0.25, num_train=5, num_eval=3)
    assert len(small.problems("train")) == 5 and len(small.problems("eval")) == 3
    assert small.problems("train") == a.problems("train")[:5]


def test_separate_eval_file_drops_train_prompts(tmp_path):
    train = write(tmp_path, "jsonl", ROWS[:40], name="train")
    evals = write(tmp_path, "jsonl", ROWS[30:], name="eval")
    task = DatasetTask(path=str(train), eval_path=str(evals))
    assert len(task.problems("train")) == 40  # no hash split when an eval file is given
    assert [p.prompt for p in task.problems("eval")] == [r["prompt"] for r in ROWS[40:]]


# --------------------------------------------------------------------------- verifiers


def one(tmp_path, answer, **options):
    rows = [{"prompt": "q", "answer": answer}]
    return DatasetTask(path=str(write(tmp_path, "jsonl", rows, name="one")), eval_fraction=0.0, **options)


@pytest.mark.parametrize("options, answer, completion, correct", [
    ({}, "19", " 19\n", 1.0),
    ({}, "19", "19 apples", 0.0),
    ({"verifier_options": {"ignore_case": True}}, "Paris", "paris", 1.0),
    ({}, "Paris", "paris", 0.0),
    ({"verifier_options": {"extract": "tags"}}, "19", "so <answer> 19 </answer>", 1.0),
    ({"verifier_options": {"extract": "tags"}}, "19", "19", 0.0),
    ({"verifier_options": {"extract": "boxed"}}, "x^{2}", "thus \\boxed{x^{2}}.", 1.0),
    ({"verifier_options": {"extract": "last_line"}}, "7", "think\nmore\n7", 1.0),
    ({"verifier": "math"}, "\\frac{1}{2}", "The answer is \\boxed{0.5}", 1.0),
    ({"verifier": "math"}, "\\frac{1}{2}", "\\boxed{0.6}", 0.0),
    ({"verifier": "regex"}, "^(yes|y)$", "y", 1.0),  # the answer is the pattern
    ({"verifier": "regex"}, "^(yes|y)$", "no", 0.0),
    ({"verifier": "regex", "verifier_options": {"pattern": "answer: {answer}\\b"}}, "3.5", "... answer: 3.5 done", 1.0),
    ({"verifier": "regex", "verifier_options": {"pattern": "answer: {answer}\\b"}}, "3.5", "answer: 3x5", 0.0),
    ({"verifier": "regex", "verifier_options": {"pattern": "{answer}", "fullmatch": True}}, "a.b", " a.b ", 1.0),
    ({"verifier": "regex"}, "([unclosed", "([unclosed", 0.0),  # a broken answer-pattern scores 0
])
def test_verifiers_by_name(tmp_path, options, answer, completion, correct):
    task = one(tmp_path, answer, **options)
    scores = task.score(task.problems("train")[0], completion)
    assert scores["correct"] == scores["reward"] == correct
    assert set(scores) == set(task.reward_names)


@pytest.mark.parametrize("verifier", ["exact", "math", "regex"])
def test_verifiers_never_raise(tmp_path, verifier, hostile_completion):
    task = one(tmp_path, "5", verifier=verifier)
    scores = task.score(task.problems("train")[0], hostile_completion)
    assert scores["correct"] in (0.0, 1.0)


def test_bad_regex_option_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="is not a regular expression"):
        one(tmp_path, "5", verifier="regex", verifier_options={"pattern": "(("})


@pytest.mark.parametrize("options, target", [
    ({}, "19"), ({"verifier": "math"}, "\\boxed{19}"),
    ({"verifier_options": {"extract": "tags"}}, "<answer>19</answer>"),
])
def test_warm_start_target_is_right(tmp_path, options, target):
    task = one(tmp_path, "19", **options)
    p = task.problems("train")[0]
    assert task.format_sft_target(p) == target and task.score(p, target)["correct"] == 1.0


def test_sft_field(tmp_path):
    rows = [{"prompt": "q", "answer": "4", "solution": "2+2=4"}]
    task = DatasetTask(path=str(write(tmp_path, "jsonl", rows)), eval_fraction=0.0, sft_field="solution",
                       verifier="regex", verifier_options={"pattern": "={answer}$"})
    p = task.problems("train")[0]
    assert task.format_sft_target(p) == "2+2=4" and task.score(p, "2+2=4")["correct"] == 1.0
