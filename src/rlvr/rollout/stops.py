"""Where a completion ends: stop conditions as data, resolved once per model, honoured by every engine.

    stops = StopConditions.resolve(tokenizer, model.generation_config, stop=["\\n\\n"], stop_token_ids=[7])
    completion, mask, logp, finish, texts = stops.finalize(completion_ids, sampled_logp, tokenizer)

A real chat model ends a turn with more than ``tokenizer.eos_token``. Qwen2.5/Qwen3 base checkpoints
have ``eos_token = <|endoftext|>`` while a chat turn ends with ``<|im_end|>``, and their
``generation_config.eos_token_id`` lists both; Llama-3 ends turns with ``<|eot_id|>``. A sampler that
stops only at the tokenizer's EOS runs every completion to ``max_new_tokens``, and the verifier then
scores text glued past the end of the turn. So the stop set is the union of

1. ``tokenizer.eos_token_id``;
2. every id in the model's ``generation_config.eos_token_id`` (an int or a list);
3. the chat template's end-of-turn token, when the tokenizer has a template: the first token the
   template writes after an assistant message's content, if it is a special token (``<|im_end|>``
   for ChatML, ``<|eot_id|>`` for Llama-3, ``<end_of_turn>`` for Gemma);
4. ``rollout.stop_token_ids`` and ``rollout.stop`` (strings) from the config.

The rule, identical for every engine (``hf``, ``lean``, ``vllm``) because every engine passes its
sampled ids through :meth:`StopConditions.finalize`:

* a completion ends at its first stop token, which is kept as its last token (mask 1: the policy
  sampled it and is trained on it, as on EOS); nothing after it is kept, trained or decoded;
* a stop string ends a completion at the token whose decoding first contains it (that token is kept:
  it was sampled), and the text is cut where the string starts (as vLLM does by default);
* ``finish_reason`` is ``"stop"`` for either, ``"length"`` for a completion that hit the budget;
* the text verifiers and reward functions see is the decoding of the tokens *before* a stop token,
  without special tokens, so no turn marker or anything past it reaches them.

Engines also stop sampling a row as soon as it ends (for speed); :meth:`finalize` is what makes the
result the same whether they do or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

__all__ = ["StopConditions", "end_of_turn_token_id"]

_MARK = "\x00rlvr-end-of-turn-probe\x00"


def end_of_turn_token_id(tokenizer) -> int | None:
    """The chat template's end-of-turn token: the first token rendered after an assistant message's
    content, when it is a special token; None without a template or when nothing special follows."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    messages = [{"role": "user", "content": "1"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that needs other roles or kwargs: no end-of-turn known
        return None
    if not isinstance(text, str) or _MARK not in text:
        return None
    after = text.split(_MARK, 1)[1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if not ids:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    first = int(ids[0])
    if first in special or (first in decoder and getattr(decoder[first], "special", False)):
        return first
    return None


def _ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [int(value)]
    return [int(v) for v in value if v is not None]


def _generation_config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "generation_config", None)


@dataclass(frozen=True)
class StopConditions:
    """The ids and strings that end a completion (see the module doc for the rule)."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...] = ()
    #: where each id came from ("eos_token", "generation_config", "chat_template", "rollout.stop_token_ids")
    sources: dict = field(default_factory=dict, compare=False)

    @classmethod
    def resolve(cls, tokenizer, generation_config=None, stop: Iterable[str] = (),
                stop_token_ids: Iterable[int] = ()) -> "StopConditions":
        """The stop set of a model: tokenizer EOS, generation-config EOS ids, the template's end of
        turn, and the user's ``stop`` strings and ``stop_token_ids``."""
        sources: dict[int, str] = {}

        def add(ids, source):
            for i in ids:
                sources.setdefault(int(i), source)

        add(_ids(tokenizer.eos_token_id), "eos_token")
        add(_ids(getattr(generation_config, "eos_token_id", None)), "generation_config")
        add(_ids(end_of_turn_token_id(tokenizer)), "chat_template")
        user_ids = _ids(list(stop_token_ids or ()))
        vocab = len(tokenizer)
        bad = [i for i in user_ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"rollout.stop_token_ids: {bad} outside the tokenizer's vocabulary (0..{vocab - 1})")
        add(user_ids, "rollout.stop_token_ids")
        strings = tuple(dict.fromkeys(str(s) for s in (stop or ())))
        if any(s == "" for s in strings):
            raise ValueError("rollout.stop: an empty string would end every completion at once; remove it")
        return cls(tuple(sources), strings, sources)

    @classmethod
    def for_model(cls, model, tokenizer, stop: Iterable[str] = (), stop_token_ids: Iterable[int] = ()):
        """:meth:`resolve` with the model's own generation config (a peft model is unwrapped)."""
        return cls.resolve(tokenizer, _generation_config(model), stop, stop_token_ids)

    @classmethod
    def from_config(cls, config, model, tokenizer) -> "StopConditions":
        """:meth:`for_model` with ``rollout.stop`` and ``rollout.stop_token_ids`` of a run config."""
        r = config.rollout
        return cls.for_model(model, tokenizer, getattr(r, "stop", ()) or (), getattr(r, "stop_token_ids", ()) or ())

    def describe(self, tokenizer) -> str:
        """``<|im_end|> (151645, eos_token), ...`` for a status line."""
        parts = [f"{tokenizer.convert_ids_to_tokens(i)} ({i}, {self.sources.get(i, '?')})" for i in self.token_ids]
        parts += [repr(s) for s in self.strings]
        return ", ".join(parts)

    # ------------------------------------------------------------------ while sampling
    def id_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.token_ids, dtype=torch.long, device=device)

    def is_stop(self, tokens: torch.Tensor) -> torch.Tensor:
        """A boolean tensor: which of ``tokens`` are stop tokens."""
        return torch.isin(tokens, self.id_tensor(tokens.device))

    def string_hit(self, tokenizer, rows: Sequence[Sequence[int]]) -> list[bool]:
        """For each row of ids so far: whether its decoded text contains a stop string."""
        if not self.strings:
            return [False] * len(rows)
        texts = tokenizer.batch_decode([list(r) for r in rows], skip_special_tokens=True)
        return [any(s in t for s in self.strings) for t in texts]

    # ------------------------------------------------------------------ after sampling
    def finalize(self, completion: torch.Tensor, logp: torch.Tensor, tokenizer, pad_id: int | None = None):
        """Apply the stop rule to sampled ids ``[B, T]`` (anything after a row's end is ignored).

        Returns ``(completion_ids, completion_mask, logp, finish_reason, texts)``: ids and log-probs
        past each row's end set to the pad id and 0, the mask 1 up to and including the row's last
        kept token, ``"stop"``/``"length"`` per row, and the text each verifier sees.
        """
        pad = tokenizer.pad_token_id if pad_id is None else pad_id
        B, T = completion.shape
        is_stop = self.is_stop(completion)
        # the first stop token of a row, kept; T when there is none
        first = torch.where(is_stop.any(-1), is_stop.float().argmax(-1), torch.full((B,), T))
        length = torch.where(first < T, first + 1, torch.full((B,), T))
        stopped = (first < T).tolist()
        rows = completion.tolist()
        cut_texts: dict[int, str] = {}
        if self.strings:
            for b in range(B):
                end = int(length[b])
                hit = self._string_end(tokenizer, rows[b][: end - 1 if stopped[b] else end])
                if hit is not None:
                    n_tokens, text = hit
                    length[b] = n_tokens
                    stopped[b] = True
                    cut_texts[b] = text
        positions = torch.arange(T).unsqueeze(0)
        mask = (positions < length.unsqueeze(1)).long()
        completion = completion.masked_fill(mask == 0, pad)
        logp = logp.masked_fill(mask == 0, 0.0)
        # the text: tokens before a stop token (a stop token is a turn marker, never text to score)
        text_len = [int(length[b]) - 1 if (stopped[b] and b not in cut_texts) else int(length[b]) for b in range(B)]
        texts = tokenizer.batch_decode([rows[b][: text_len[b]] for b in range(B)], skip_special_tokens=True)
        for b, text in cut_texts.items():
            texts[b] = text
        finish = ["stop" if s else "length" for s in stopped]
        return completion, mask, logp, finish, texts

    def _string_end(self, tokenizer, ids: list[int]) -> tuple[int, str] | None:
        """(tokens kept, text before the string) for the first stop string in ``ids``' text, or None."""
        full = tokenizer.decode(ids, skip_special_tokens=True)
        if not any(s in full for s in self.strings):
            return None
        for n in range(1, len(ids) + 1):  # the first token whose decoding contains a stop string
            text = tokenizer.decode(ids[:n], skip_special_tokens=True)
            at = [text.find(s) for s in self.strings if s in text]
            if at:
                return n, text[: min(at)]
        return None
