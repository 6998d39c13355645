"""The seam between turns of a chat model's episode: the token ids a chat template puts between the end of the
policy's turn and the start of its next one (``../shared/design/agentic.md``, section 4, "the seam").

A multi-turn episode never re-renders the conversation: the policy's sampled ids stay as they were, and only the
environment's new messages become ids. Rendering them is the chat template's job, but a template renders whole
conversations, so the seam is read off a rendering of a stand-in conversation::

    [user "x", assistant MARK] + the observation's messages        (with the generation prompt)

Everything after ``MARK`` is the assistant's end of turn (``<|im_end|>\\n``), the observation's turns
(``<|im_start|>user\\n<tool_response>\\n282\\n</tool_response><|im_end|>\\n``, a tool result in Qwen's format) and
the generation prompt (``<|im_start|>assistant\\n``). The part of the end of turn the policy already sampled (its
``<|im_end|>`` stop token) is not added twice; a turn that ended on a stop string gets the whole end of turn. Reading
the text after ``MARK`` (not the difference of two renderings) keeps the seam right for templates that render an
earlier assistant turn differently once it is no longer the last (Qwen3 drops an empty ``<think></think>``).

Traps this answers (the design note's list): a newline after ``<|im_end|>`` that the model never samples and a
difference-of-renderings would drop; a template that is not prefix-preserving; BPE merges across the seam (the seam
starts at a special token, where the tokenizer splits anyway, or else is tokenized on its own and never merged with
the sampled ids). Not handled: a template whose tool turn depends on the assistant's structured ``tool_calls`` (the
stand-in assistant has plain text content); such a template's seam fails the check below loudly.
"""

from __future__ import annotations

_MARK = "RLVR_SEAM_MARK_7f3a"


def render_ids(tokenizer, messages: list[dict], tools=None, template_kwargs: dict | None = None) -> list[int]:
    """The first prompt of a chat episode: ``messages`` rendered with the template and its generation prompt
    (``tools``: the tools' schemas or functions, as ``apply_chat_template`` takes them; ``template_kwargs``: the
    template's own variables, e.g. ``{"enable_thinking": False}``)."""
    text = _render(tokenizer, messages, tools, template_kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def seam_ids(tokenizer, turn_ids: list[int], messages: list[dict], tools=None,
             template_kwargs: dict | None = None) -> list[int]:
    """The ids to append after the policy's turn ``turn_ids`` (as sampled) so that the context continues as the chat
    template would render ``messages`` and then the next assistant turn's generation prompt."""
    if not messages:
        raise ValueError("an observation given as chat messages needs at least one message")
    text = _render(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARK}, *messages],
                   tools, template_kwargs)
    if text.count(_MARK) != 1:
        raise ValueError("the chat template does not render an assistant turn's content as it is; rlvr cannot find "
                         "the seam between turns (give observations as text instead)")
    tail = text[text.index(_MARK) + len(_MARK):]
    missing = [m for m in messages if isinstance(m.get("content"), str) and m["content"] not in tail]
    if missing:
        raise ValueError(f"the chat template did not render the observation message(s) {missing[:1]} after the "
                         "assistant's turn (a template that needs structured tool_calls on the assistant turn?)")
    ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
    return ids[_already_sampled(tokenizer, turn_ids, ids):]


def _already_sampled(tokenizer, turn_ids: list[int], seam: list[int]) -> int:
    """How many of the seam's first ids end the sampled turn already: the end-of-turn special token the policy
    stopped on (``<|im_end|>``), and what follows it if that was sampled too. 0 when the seam does not start with a
    special token (text is never matched: an accidental ``<`` at the end of a turn is not a half of ``<|im_end|>``)."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if not seam or seam[0] not in special:
        return 0
    for j in range(min(len(seam), len(turn_ids)), 0, -1):
        if turn_ids[-j:] == seam[:j]:
            return j
    return 0


def _render(tokenizer, messages: list[dict], tools, template_kwargs: dict | None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("an environment gave chat messages, but the policy's tokenizer has no chat template; give "
                         "the environment's prompt and observations as text, or use a chat model")
    kwargs = {**(template_kwargs or {}), **({"tools": tools} if tools else {})}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
