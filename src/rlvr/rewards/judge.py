"""Generative judges: a local causal LM asked whether a completion is right, its verdict a reward component.

The judge is prompted with a template filled from the problem and the completion, then its verdict
is read in one of two ways::

    reward:
      components:
        - {type: judge, name: judge, path: Qwen/Qwen3-0.6B}                     # yes_no: p(Yes) in [0, 1]
        - {type: judge, name: grade, path: policy, mode: score, low: 0, high: 10,
           template: "Question: {question}\\nAnswer: {answer}\\nGrade it from 0 to 10:"}

* ``mode: yes_no`` (default) -- one forward pass; the reward is
  ``p(yes) / (p(yes) + p(no))`` of the next token after the prompt (:func:`yes_probability`), where
  ``p(yes)`` sums the probabilities of the single-token yes words (``yes_words``, by default ``Yes``,
  `` Yes``, ``yes``, `` yes``; :func:`verdict_token_ids`) and ``p(no)`` those of the no words. A soft
  verdict: it ranks two completions the judge is unsure about, where a sampled "Yes" would not.
* ``mode: score`` -- greedy decoding of ``max_new_tokens`` tokens; the reward is the first number of the
  text, which must lie in ``[low, high]``, scaled to ``[0, 1]`` (:func:`parse_score`). A verdict
  without such a number is NaN: a counted failure (``reward.on_failure``), not a 0.

Template placeholders: ``{question}`` (the problem's prompt), ``{answer}`` (the completion being
judged), ``{reference}`` (the problem's reference answer, optional) and, in score mode, ``{low}`` and
``{high}``; a literal brace is written ``{{`` / ``}}``. With the tokenizer's chat template (``chat_template``,
by default used when the tokenizer has one) the filled template is the one user turn of the
conversation, rendered with the generation prompt.

``path`` is an HF model folder or hub id, or ``policy``: the policy's starting checkpoint (the
``policy_path`` the training pipeline passes to :func:`rlvr.rewards.components.build_component`), a
frozen copy of the policy's base as judge. ``last_verdicts`` keeps the raw verdicts of the last batch
(score mode: the generated text; yes_no mode: the judge's most likely next token), ``unparsable``
counts the verdicts that gave NaN.

Problems are duck-typed (``.prompt``, ``.answer``): this module sits below :mod:`rlvr.tasks`.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Any

from rlvr.rewards.components import RewardComponentError, question_of, register_component

__all__ = ["DEFAULT_TEMPLATES", "JUDGE_MODES", "NO_WORDS", "YES_WORDS", "LLMJudge", "parse_score",
           "verdict_token_ids", "yes_probability"]

#: How a verdict is read: the yes/no next-token probability, or a number in generated text.
JUDGE_MODES = ("yes_no", "score")
#: Default verdict words (each used only where it is one token of the judge's vocabulary).
YES_WORDS = ("Yes", " Yes", "yes", " yes")
NO_WORDS = ("No", " No", "no", " no")

#: The template of each mode when none is given.
DEFAULT_TEMPLATES = {
    "yes_no": ("You are grading an answer to a question.\n\n"
               "Question:\n{question}\n\n"
               "Reference answer: {reference}\n\n"
               "Proposed answer:\n{answer}\n\n"
               "Is the proposed answer correct (does it agree with the reference answer)? "
               "Reply with Yes or No only."),
    "score": ("You are grading an answer to a question.\n\n"
              "Question:\n{question}\n\n"
              "Reference answer: {reference}\n\n"
              "Proposed answer:\n{answer}\n\n"
              "Rate the proposed answer's correctness on a scale from {low} (wrong) to {high} (fully correct). "
              "Reply with the number only.\nScore:"),
}

#: The placeholders a template may use, per mode.
_PLACEHOLDERS = {"yes_no": ("question", "answer", "reference"),
                 "score": ("question", "answer", "reference", "low", "high")}

#: A number: optional sign, digits with an optional decimal part (or ".5"); not glued to a word or a
#: preceding dot ("GPT4", "v2", "1.2.3"'s later parts are not scores).
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_score(text: str | None, low: float = 0.0, high: float = 10.0) -> float:
    """The first number in a judge's verdict, scaled from ``[low, high]`` to ``[0, 1]``; NaN if none fits.

    ``"Score: 7/10"`` -> 7 (the first number; the "/10" is ignored), ``"8"``, ``"rating 3.5"``,
    ``"**-2**"`` (a sign directly before the digits counts). The number must lie in ``[low, high]``.

    A verdict with no number, or with a first number out of range, is NaN rather than 0: it is the
    judge failing to answer, not the judge saying "bad". As NaN it becomes a *counted* failure in
    :class:`rlvr.rewards.components.RewardPipeline` (``reward.on_failure`` decides what it costs), so a
    judge that stops following its format shows up in the failure counts instead of silently
    pushing rewards towards the bottom of the scale.

    Raises:
        ValueError: ``low >= high``.
    """
    if not low < high:
        raise ValueError(f"parse_score: low = {low} must be below high = {high}")
    if not text:
        return math.nan
    match = _NUMBER.search(text)
    if match is None:
        return math.nan
    value = float(match.group())
    if not (low <= value <= high):
        return math.nan
    return (value - low) / (high - low)


def yes_probability(logits_row, yes_ids: Sequence[int], no_ids: Sequence[int]) -> float:
    """``sum p(yes ids) / (sum p(yes ids) + sum p(no ids))`` from one row of next-token logits ``[V]``.

    Computed in log space: with ``a = logsumexp(logits[yes])`` and ``b = logsumexp(logits[no])`` it is
    ``exp(a - logsumexp([a, b]))`` (the full softmax's normaliser cancels), exact for logits whose
    probabilities would underflow. NaN when the logits are not finite.

    Raises:
        ValueError: an empty id list, or an id in both lists.
    """
    import torch

    yes, no = sorted({int(i) for i in yes_ids}), sorted({int(i) for i in no_ids})
    if not yes or not no:
        raise ValueError("yes_probability: needs at least one yes id and one no id")
    if set(yes) & set(no):
        raise ValueError(f"yes_probability: token id(s) {sorted(set(yes) & set(no))} are both a yes and a no")
    row = torch.as_tensor(logits_row).detach().to(torch.float64).reshape(-1)
    a = torch.logsumexp(row[yes], dim=0)
    b = torch.logsumexp(row[no], dim=0)
    p = torch.exp(a - torch.logsumexp(torch.stack([a, b]), dim=0))
    value = float(p)
    return value if math.isfinite(value) else math.nan


def verdict_token_ids(tokenizer, words: Sequence[str] = YES_WORDS, field: str = "yes_words") -> tuple[int, ...]:
    """The token ids of the verdict ``words`` that are single tokens of ``tokenizer`` (distinct, in order).

    A word the tokenizer splits into several tokens is skipped (its first token would also stand for
    other words). ``field`` names the config field in the error.

    Raises:
        RewardComponentError: no word is a single token.
    """
    if isinstance(words, str):
        words = (words,)
    ids: list[int] = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    if not ids:
        splits = {w: len(tokenizer.encode(w, add_special_tokens=False)) for w in words}
        raise RewardComponentError(
            f"judge.{field} = {list(words)!r}: none is a single token of the judge's tokenizer (tokens per word: "
            f"{splits}); give {field} words the tokenizer has as one token")
    return tuple(ids)


def _load_model(path: str, dtype: str, device: str):
    """(model, tokenizer) of the judge; torch and transformers are imported only when a judge is built."""
    from rlvr.models.load import load_model_and_tokenizer

    return load_model_and_tokenizer(path, dtype=dtype, device=device)


def _template_fields(template: str, mode: str) -> set[str]:
    """The placeholders of ``template``; an error naming the field for an unknown or malformed one."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise RewardComponentError(f"judge.template: {err} (write a literal brace as '{{{{' or '}}}}')") from None
    allowed = _PLACEHOLDERS[mode]
    fields = {f for _, f, _, _ in parsed if f is not None}
    unknown = sorted(f for f in fields if f not in allowed)
    if unknown:
        shown = ", ".join("{" + f + "}" for f in unknown)
        raise RewardComponentError(f"judge.template: unknown placeholder(s) {shown}; in mode {mode!r} a template may "
                                   f"use {', '.join('{' + a + '}' for a in allowed)} (a literal brace is '{{{{')")
    if "answer" not in fields:
        raise RewardComponentError("judge.template: has no {answer} placeholder, so the judge would never see the "
                                   "completion; add {answer}")
    return fields


@register_component("judge")
class LLMJudge:
    """A causal LM as a reward component (see the module docstring for the two modes).

    Args:
        name: the component's name (its key in ``reward_components``, ``reward/<name>`` in the logs).
        path: an HF model folder or hub id, loaded with :func:`rlvr.models.load.load_model_and_tokenizer`;
            ``"policy"``: ``policy_path``.
        template: the judge's prompt, with ``{question}``, ``{answer}`` and optionally ``{reference}``
            (and ``{low}``, ``{high}`` in score mode); None: :data:`DEFAULT_TEMPLATES` of ``mode``.
        mode: ``"yes_no"`` (next-token probability of yes vs no) or ``"score"`` (a number in generated text).
        low, high: the score range (score mode); a verdict outside it is NaN.
        max_new_tokens: tokens generated greedily for a verdict (score mode).
        chat_template: render the filled template as a user turn with the tokenizer's chat template;
            None: when the tokenizer has one.
        chat_template_kwargs: extra arguments of ``apply_chat_template`` (e.g. ``{enable_thinking: false}``).
        batch_size: prompts per forward / generate call.
        device, dtype: where and in which precision the judge runs.
        yes_words, no_words: verdict words (yes_no mode); None: :data:`YES_WORDS`, :data:`NO_WORDS`.
        policy_path: the policy's starting checkpoint (passed by the training pipeline), for ``path: policy``.

    Attributes:
        names: ``(name,)``.
        last_verdicts: the raw verdict of each sample of the last batch.
        unparsable: verdicts that gave NaN so far; ``judged``: verdicts so far.
    """

    def __init__(self, name: str, path: str, template: str | None = None, mode: str = "yes_no",
                 low: float = 0.0, high: float = 10.0, max_new_tokens: int = 8, chat_template: bool | None = None,
                 chat_template_kwargs: dict | None = None, batch_size: int = 16, device: str = "cpu",
                 dtype: str = "float32", yes_words: Sequence[str] | None = None, no_words: Sequence[str] | None = None,
                 policy_path: str | None = None):
        import torch

        if not isinstance(name, str) or not name:
            raise RewardComponentError(f"judge.name = {name!r}: give the component a non-empty name")
        if mode not in JUDGE_MODES:
            raise RewardComponentError(f"judge.mode = {mode!r}; expected one of {', '.join(JUDGE_MODES)}")
        if mode == "score" and not float(low) < float(high):
            raise RewardComponentError(f"judge.low = {low}, judge.high = {high}: low must be below high")
        if int(max_new_tokens) < 1:
            raise RewardComponentError(f"judge.max_new_tokens = {max_new_tokens}: must be at least 1")
        if int(batch_size) < 1:
            raise RewardComponentError(f"judge.batch_size = {batch_size}: must be at least 1")
        if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise RewardComponentError(f"judge.dtype = {dtype!r}: not a torch dtype (e.g. float32, bfloat16)")
        if template is None:
            template = DEFAULT_TEMPLATES[mode]
        if not isinstance(template, str):
            raise RewardComponentError(f"judge.template: expected a string, got {type(template).__name__}")
        self._fields = _template_fields(template, mode)
        self.names = (name,)
        self.name, self.template, self.mode = name, template, mode
        self.low, self.high = float(low), float(high)
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
        self.device, self.dtype = device, dtype
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.path = self._resolve_path(path, policy_path)
        self.last_verdicts: list[str] = []
        self.unparsable = 0
        self.judged = 0

        self.model, self.tokenizer = _load_model(self.path, dtype, device)
        self.model.eval()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise RewardComponentError(f"judge.chat_template = true, but the tokenizer at {self.path!r} has no chat "
                                       "template; set chat_template: false to give it the filled template as text")
        self.chat_template = has_template if chat_template is None else bool(chat_template)
        if mode == "yes_no":
            self.yes_ids = verdict_token_ids(self.tokenizer, tuple(yes_words or YES_WORDS), "yes_words")
            self.no_ids = verdict_token_ids(self.tokenizer, tuple(no_words or NO_WORDS), "no_words")
            both = sorted(set(self.yes_ids) & set(self.no_ids))
            if both:
                raise RewardComponentError(f"judge.yes_words and judge.no_words share token id(s) {both}; "
                                           "make the two lists disjoint")
        else:
            self.yes_ids = self.no_ids = ()

    def _resolve_path(self, path: str, policy_path: str | None) -> str:
        from rlvr.models.load import BUILTIN_TINY

        path = str(path)
        if path == "policy":
            if not policy_path:
                raise RewardComponentError(f"judge {self.name!r}: path: policy needs the policy's starting checkpoint, "
                                           "and none was given (build it with policy_path=..., or set judge.path to "
                                           "a model folder)")
            path = str(policy_path)
        if path == BUILTIN_TINY:
            raise RewardComponentError(f"judge {self.name!r}: path {BUILTIN_TINY!r} is not a checkpoint; give a model "
                                       "folder (e.g. the warm-started checkpoint) or a hub id")
        return path

    # -- prompts -------------------------------------------------------------------------------------------

    def fill(self, problem, text: str) -> str:
        """The template filled for one sample (before the chat template)."""
        values: dict[str, Any] = {"question": question_of(problem), "answer": text}
        if "reference" in self._fields:
            reference = getattr(problem, "answer", None)
            if reference is None:
                raise ValueError(f"judge {self.name!r}: the template uses {{reference}} but a problem has no answer; "
                                 "drop {reference} from judge.template")
            values["reference"] = str(reference)
        if self.mode == "score":
            values["low"], values["high"] = f"{self.low:g}", f"{self.high:g}"
        return self.template.format(**values)

    def render(self, problem, text: str) -> str:
        """The exact prompt text the judge reads for one sample."""
        filled = self.fill(problem, text)
        if not self.chat_template:
            return filled
        return self.tokenizer.apply_chat_template([{"role": "user", "content": filled}], tokenize=False,
                                                  add_generation_prompt=True, **self.chat_template_kwargs)

    def _encode(self, prompts: list[str]):
        # a chat template writes its own special tokens (a BOS included); plain text gets the tokenizer's
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=not self.chat_template)
        return enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)

    # -- verdicts ------------------------------------------------------------------------------------------

    def __call__(self, problems: Sequence[Any], texts: Sequence[str]) -> dict[str, list[float]]:
        """``{name: [reward per text]}``, NaN where the verdict could not be read."""
        if len(problems) != len(texts):
            raise ValueError(f"judge {self.name!r}: {len(problems)} problems for {len(texts)} texts")
        prompts = [self.render(p, t) for p, t in zip(problems, texts)]
        if not prompts:
            return {self.name: []}
        # a prompt the judge's context cannot hold (with its verdict) is not cut: it is a counted failure (NaN)
        room = self.context_length() - (self.max_new_tokens if self.mode == "score" else 0)
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=not self.chat_template)["input_ids"]]
        fits = [i for i, n in enumerate(lengths) if n <= room]
        values: list[float] = [math.nan] * len(prompts)
        verdicts: list[str] = [""] * len(prompts)
        read = self._yes_no if self.mode == "yes_no" else self._score
        for i in range(0, len(fits), self.batch_size):
            idx = fits[i:i + self.batch_size]
            v, raw = read([prompts[j] for j in idx])
            for j, value, verdict in zip(idx, v, raw):
                values[j], verdicts[j] = value, verdict
        self.last_verdicts = verdicts
        self.judged += len(values)
        self.unparsable += sum(1 for v in values if not math.isfinite(v))
        return {self.name: values}

    def context_length(self) -> int:
        """The longest sequence the judge reads: its ``max_position_embeddings`` (unbounded if it has none)."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    def next_token_logits(self, prompts: list[str]):
        """``[B, V]`` float32 logits of the token after each prompt (one left-padded forward)."""
        import torch

        ids, mask = self._encode(prompts)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0, as generate does
        from rlvr.models.forward import accepts

        kwargs = {}
        if accepts(self.model, "logits_to_keep"):
            kwargs["logits_to_keep"] = 1
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs)
        # left padding: the last column is every row's last prompt token
        return out.logits[:, -1, :].float()

    def _yes_no(self, prompts: list[str]) -> tuple[list[float], list[str]]:
        logits = self.next_token_logits(prompts)
        values = [yes_probability(row, self.yes_ids, self.no_ids) for row in logits]
        verdicts = self.tokenizer.batch_decode(logits.argmax(-1).unsqueeze(-1).cpu())
        return values, verdicts

    def _score(self, prompts: list[str]) -> tuple[list[float], list[str]]:
        import torch
        from transformers import GenerationConfig

        ids, mask = self._encode(prompts)
        base = getattr(self.model, "generation_config", None)
        config = GenerationConfig(do_sample=False, max_new_tokens=self.max_new_tokens,
                                  eos_token_id=getattr(base, "eos_token_id", None) or self.tokenizer.eos_token_id,
                                  pad_token_id=self.tokenizer.pad_token_id)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        sequences = out.sequences if hasattr(out, "sequences") else out
        texts = self.tokenizer.batch_decode(sequences[:, ids.shape[1]:].cpu(), skip_special_tokens=True)
        return [parse_score(t, self.low, self.high) for t in texts], texts

