"""task.options.chat_template_kwargs reaches the chat template (e.g. Qwen3's enable_thinking), and a
value that cannot apply is refused in one line naming the option."""

from __future__ import annotations

import json
import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.models.stand_in import CHATML_TEMPLATE  # noqa: E402

#: ChatML with Qwen3's switch: an empty think block after the generation prompt when thinking is off.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
PLAIN = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"


def save_tokenizer(path, template):
    from rlvr.models.stand_in import build_bpe_tokenizer

    tok = build_bpe_tokenizer()
    tok.chat_template = template
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def thinking_tokenizer(tmp_path_factory):
    return save_tokenizer(tmp_path_factory.mktemp("tok") / "thinking", THINKING_TEMPLATE)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    rows = [{"prompt": "What is 2+3?", "answer": "5"},
            {"prompt": [{"role": "user", "content": "What is 1-4?"}], "answer": "-3"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_kwargs_reach_the_rendered_prompt(data, thinking_tokenizer):
    from rlvr.tasks import make_task

    def prompts(**options):
        task = make_task("dataset", path=data, tokenizer=thinking_tokenizer, eval_fraction=0.0, **options)
        return [p.prompt for p in task.problems("train")]

    assert prompts()[0] == PLAIN  # the variable undefined: the template's default
    assert prompts(chat_template_kwargs={"enable_thinking": True})[0] == PLAIN
    off = prompts(chat_template_kwargs={"enable_thinking": False})
    assert off[0] == PLAIN + "<think>\n\n</think>\n\n"
    assert off[1] == "<|im_start|>user\nWhat is 1-4?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_render_prompt_passes_them():
    from rlvr.models.stand_in import build_bpe_tokenizer
    from rlvr.tasks.dataset import render_prompt

    tok = build_bpe_tokenizer()
    tok.chat_template = THINKING_TEMPLATE
    messages = [{"role": "user", "content": "What is 2+3?"}]
    assert render_prompt(tok, messages) == PLAIN
    assert render_prompt(tok, messages, {"enable_thinking": False}).endswith("<think>\n\n</think>\n\n")


def test_config_accepts_the_option(data, thinking_tokenizer):
    from rlvr.config import load_config
    from rlvr.tasks import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = load_config(None, ["task.name=dataset", f"task.options.path={data}", f"model.path={thinking_tokenizer}",
                               "task.options.chat_template_kwargs={enable_thinking: false}",
                               "task.options.eval_fraction=0.0"])
    assert c.task.options["chat_template_kwargs"] == {"enable_thinking": False}
    task = make_task(c.task.name, **c.task.options)
    assert task.problems("train")[0].prompt.endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize("value", [True, "enable_thinking=false", ["enable_thinking"], 0])
def test_non_mapping_is_refused(data, thinking_tokenizer, value):
    from rlvr.tasks import make_task

    with pytest.raises(ValueError, match=r"task\.options\.chat_template_kwargs must be a mapping .*"
                                         r"e\.g\. \{enable_thinking: false\}"):
        make_task("dataset", path=data, tokenizer=thinking_tokenizer, chat_template_kwargs=value)


def test_reserved_key_is_refused(data, thinking_tokenizer):
    from rlvr.tasks import make_task

    with pytest.raises(ValueError, match=r"task\.options\.chat_template_kwargs key 'add_generation_prompt'"):
        make_task("dataset", path=data, tokenizer=thinking_tokenizer,
                  chat_template_kwargs={"add_generation_prompt": False})


def test_refused_when_no_template_is_applied(tmp_path, data, thinking_tokenizer):
    from rlvr.tasks import make_task

    plain_rows = tmp_path / "plain.jsonl"
    plain_rows.write_text(json.dumps({"prompt": "What is 2+3?", "answer": "5"}) + "\n")
    kwargs = {"enable_thinking": False}
    fix = r"remove chat_template_kwargs, or use a model whose tokenizer has a chat template"
    with pytest.raises(ValueError, match=r"task\.options\.chat_template_kwargs is set, but no chat template is "
                                         r"applied \(chat_template is false\); " + fix):
        make_task("dataset", path=str(plain_rows), tokenizer=thinking_tokenizer, chat_template=False,
                  chat_template_kwargs=kwargs)
    with pytest.raises(ValueError, match=r"chat_template_kwargs is set, .*\(the tokenizer 'builtin:tiny' has no "
                                         r"chat template\)"):
        make_task("dataset", path=str(plain_rows), tokenizer="builtin:tiny", chat_template_kwargs=kwargs)
    no_template = save_tokenizer(tmp_path / "no_template", None)
    with pytest.raises(ValueError, match=r"chat_template_kwargs is set, .*has no chat template"):
        make_task("dataset", path=str(plain_rows), tokenizer=no_template, chat_template_kwargs=kwargs)
    with pytest.raises(ValueError, match=r"chat_template_kwargs is set, .*\(task\.options\.tokenizer is not set\)"):
        make_task("dataset", path=str(plain_rows), chat_template_kwargs=kwargs)
    # none given, or an empty mapping: plain text as before
    assert make_task("dataset", path=str(plain_rows), tokenizer="builtin:tiny",
                     chat_template_kwargs={}, eval_fraction=0.0).problems("train")[0].prompt == "What is 2+3?"


def test_chatml_stand_in_template_is_unchanged_by_unused_kwargs(tmp_path, data):
    """A template that does not use a variable renders the same with it (Jinja ignores it)."""
    from rlvr.tasks import make_task

    tok = save_tokenizer(tmp_path / "chatml", CHATML_TEMPLATE)
    a = make_task("dataset", path=data, tokenizer=tok, eval_fraction=0.0)
    b = make_task("dataset", path=data, tokenizer=tok, eval_fraction=0.0,
                  chat_template_kwargs={"enable_thinking": False})
    assert [p.prompt for p in a.problems("train")] == [p.prompt for p in b.problems("train")]
