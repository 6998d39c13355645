"""Any `reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ dataset as a task.

reasoning-gym generates its items procedurally (offline) and ships a verifier per dataset,
``dataset.score_answer(answer, entry) -> float`` in [0, 1]. This adapter adds a prompt
format, a held-out eval split and a verifier that never raises.

Train/eval split. A reasoning-gym dataset made with seed ``s`` builds item ``i`` from
``Random(s + i)``, so datasets with seeds ``s`` and ``s + 1`` hold the same items shifted
by one. Train uses ``seed`` and eval uses ``eval_seed`` (default ``seed + 1_000_003``, far
beyond any train index), and on top of that every eval item whose question text also
appears in train (or earlier in eval) is dropped. When a dataset has too few distinct
questions, eval may hold fewer than ``num_eval`` problems.

Rewards:

* ``score``: the dataset's own verifier score, clamped to [0, 1]. Some verifiers give
  partial credit, sometimes for substrings (for answer ``7``, ``"17"`` scores 0.5).
* ``correct``: 1.0 iff ``score >= 1.0``.
* ``reward``: ``score`` (partial credit kept) by default, ``correct`` with
  ``partial_credit=False``.
* ``format``: 1.0 if the completion holds an ``<answer>...</answer>`` pair.

Presets. ``preset="tiny"`` gives prompts in proportion to the built-in tiny model (a character-level
model that reads every character of the prompt): no instruction, a plain answer as the warm-start
target (``answer_format="plain"``; the verifier reads a completion without tags as the answer), and
the text every question of the dataset shares dropped. For any dataset that shared text is found,
not listed (:func:`common_lead_in`: the longest prefix and suffix all train questions share, cut
at whitespace so no varying content is touched); a few datasets also have tuned settings
(``TINY_PRESETS``: chain_sum, basic_arithmetic, products: small numbers, few terms, their lead-in
by hand). The verifier always scores against the dataset's own entry, so a shorter prompt changes
what the model reads, never how it is scored. Options given alongside a preset override its
values. A config with ``model.path: builtin:tiny`` fills in ``preset: tiny`` for every
reasoning-gym dataset unless ``task.options`` names a preset (``preset: null`` keeps reasoning-gym's
own text and difficulty).

Beware: a few verifiers are lenient (``game_of_life_halting`` accepts any non-empty
answer); check a dataset's verifier before training on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any

from rlvr.tasks.base import (
    MAX_ANSWER_CHARS,
    Problem,
    check_split,
    guarded,
    register_task,
    unit_float,
    zero_rewards,
)

__all__ = ["DEFAULT_INSTRUCTION", "EVAL_SEED_OFFSET", "TINY_PRESETS", "ReasoningGymTask", "common_lead_in",
           "extract_tagged_answer"]

EVAL_SEED_OFFSET = 1_000_003
DEFAULT_INSTRUCTION = "Give your final answer inside <answer></answer> tags."
_OPEN, _CLOSE = "<answer>", "</answer>"

#: ``preset="tiny"``: per dataset, options the built-in tiny model can learn from in a short warm start
#: (about the difficulty of the default arithmetic recipe: two operands of 1-2 digits).
TINY_PRESETS: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                  "drop_text": ["State the final answer to the following arithmetic problem: "]},
    "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                         "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False,
                         "drop_text": ["Calculate "]},
    "products": {"min_digits": 1, "max_digits": 1,
                 "drop_text": ["Solve the following multiplication: ",
                               ". Give only the result as your final answer."]},
}
_TINY_COMMON = {"instruction": "", "answer_format": "plain"}
#: Questions the shared text is looked for in (the first train questions).
LEAD_IN_SAMPLE = 256


def common_lead_in(questions: list[str]) -> tuple[str, str]:
    """``(prefix, suffix)``: the longest text every question starts with and ends with, cut back to
    whitespace (the prefix ends with a whitespace character, the suffix starts with one) so that a
    shared first character of the varying part (a bracket, a digit, a sign) is never taken. Empty
    strings when nothing is shared, when fewer than two questions are given, or when the two would
    leave a question empty."""
    if len(questions) < 2:
        return "", ""
    prefix = os.path.commonprefix(questions)
    suffix = os.path.commonprefix([q[::-1] for q in questions])[::-1]
    cut = max(prefix.rfind(c) for c in _WHITESPACE)
    prefix = prefix[:cut + 1] if cut >= 0 else ""
    starts = [i for i in (suffix.find(c) for c in _WHITESPACE) if i >= 0]
    suffix = suffix[min(starts):] if starts else ""
    shortest = min(len(q) for q in questions)
    if len(prefix) + len(suffix) >= shortest:  # overlapping: keep the prefix only, if it leaves something
        suffix = ""
        if len(prefix) >= shortest:
            prefix = ""
    return prefix, suffix


_WHITESPACE = (" ", "\n", "\t")


def extract_tagged_answer(completion: str) -> tuple[str, bool]:
    """The stripped content of the last ``<answer>...</answer>`` pair and True, or the
    stripped completion and False when there is no such pair.

    Uses ``rfind`` (linear time) rather than a regex, which can go quadratic on inputs
    such as ``"<answer>" * 100_000``.
    """
    end = completion.rfind(_CLOSE)
    if end != -1:
        start = completion.rfind(_OPEN, 0, end)
        if start != -1:
            return completion[start + len(_OPEN) : end].strip(), True
    return completion.strip(), False


@register_task("reasoning_gym")
class ReasoningGymTask:
    """A reasoning-gym dataset with a disjoint eval split and a guarded verifier.

    Args:
        dataset: a reasoning-gym dataset name, e.g. ``"chain_sum"``.
        seed: seed of the train dataset.
        eval_seed: seed of the eval dataset (default ``seed + 1_000_003``).
        num_train: train problems (default 1000).
        num_eval: eval problems at most (default 200; see the module doc).
        size: reasoning-gym's name for ``num_train``; give one or the other.
        partial_credit: if True, ``reward`` is the verifier's score (partial credit kept);
            if False, ``reward`` is ``correct``.
        instruction: appended to each question, after a blank line.
        preset: ``"tiny"`` (see the module doc; any dataset) or None.
        drop_text: strings removed from each question (e.g. a fixed lead-in) to shorten prompts.
        answer_format: warm-start target: ``"tags"`` (``<answer>X</answer>``) or ``"plain"`` (``X``).
        **dataset_config: fields of the dataset's config class (e.g. ``min_terms=2``).

    Raises:
        ValueError: unknown dataset (with close matches), unknown config field (with the
            allowed ones), or a config the dataset rejects.
    """

    reward_names = ("reward", "correct", "score", "format")

    def __init__(
        self,
        dataset: str,
        seed: int = 0,
        eval_seed: int | None = None,
        num_train: int | None = None,
        num_eval: int = 200,
        size: int | None = None,
        partial_credit: bool = True,
        instruction: str = DEFAULT_INSTRUCTION,
        preset: str | None = None,
        drop_text: Any = (),
        answer_format: str = "tags",
        **dataset_config: Any,
    ) -> None:
        if preset is not None:
            if preset != "tiny":
                raise ValueError(f"task reasoning_gym:{dataset}: unknown preset {preset!r}; known: tiny")
            given = {k: v for k, v in dict(instruction=instruction, drop_text=drop_text,
                                           answer_format=answer_format).items()
                     if v != {"instruction": DEFAULT_INSTRUCTION, "drop_text": (), "answer_format": "tags"}[k]}
            merged = {**_TINY_COMMON, **TINY_PRESETS.get(dataset, {}), **dataset_config, **given}
            instruction, drop_text, answer_format = (merged.pop("instruction"), merged.pop("drop_text", ()),
                                                     merged.pop("answer_format"))
            dataset_config = merged
        if isinstance(drop_text, str):
            drop_text = [drop_text]
        if answer_format not in ("tags", "plain"):
            raise ValueError(f"task reasoning_gym:{dataset}: answer_format must be 'tags' or 'plain', got {answer_format!r}")
        self.preset = preset
        self.drop_text = tuple(str(t) for t in drop_text)
        self.answer_format = answer_format
        self.dataset = dataset
        self.name = f"reasoning_gym:{dataset}"
        self.seed = int(seed)
        self.eval_seed = self.seed + EVAL_SEED_OFFSET if eval_seed is None else int(eval_seed)
        self.num_train = _resolve_num_train(num_train, size)
        self.num_eval = int(num_eval)
        if self.num_eval < 0:
            raise ValueError(f"num_eval must be >= 0, got {num_eval}")
        self.partial_credit = bool(partial_credit)
        self.instruction = instruction
        self.dataset_config = dict(dataset_config)
        _check_dataset(dataset, self.dataset_config)
        # num_train or 1: reasoning-gym configs refuse size 0, and an empty train split
        # only needs the dataset object for its verifier.
        self._train_data = self._create(self.seed, max(self.num_train, 1))
        self._cache: dict[str, list[Problem]] = {}
        # preset tiny on a dataset without tuned settings: drop the text every question shares (found, not listed)
        self.lead_in = ("", "")
        if preset == "tiny" and dataset not in TINY_PRESETS and not self.drop_text:
            sample = [self._train_data[i]["question"] for i in range(min(self.num_train, LEAD_IN_SAMPLE))]
            self.lead_in = common_lead_in(sample)

    # ------------------------------------------------------------------ problems

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` (all when None); deterministic."""
        check_split(split)
        if split not in self._cache:
            self._cache[split] = self._build_train() if split == "train" else self._build_eval()
        problems = self._cache[split]
        return list(problems if n is None else problems[: max(0, n)])

    def _create(self, seed: int, size: int) -> Any:
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.dataset, seed=seed, size=size, **self.dataset_config)
        except (AssertionError, TypeError) as error:
            raise ValueError(f"reasoning-gym rejected the config of {self.dataset!r}: {error}") from error

    def _build_train(self) -> list[Problem]:
        return [self._problem(self._train_data[i], "train", i) for i in range(self.num_train)]

    def _build_eval(self) -> list[Problem]:
        """Eval items from ``eval_seed`` whose question is new to train and to eval so far."""
        if self.num_eval == 0:
            return []
        seen = {p.meta["entry"]["question"] for p in self.problems("train")}
        pool_size = 4 * self.num_eval + 64
        data = self._create(self.eval_seed, pool_size)
        problems: list[Problem] = []
        for i in range(pool_size):
            entry = data[i]
            if entry["question"] in seen:
                continue
            seen.add(entry["question"])
            problems.append(self._problem(entry, "eval", i))
            if len(problems) == self.num_eval:
                break
        return problems

    def _problem(self, entry: dict[str, Any], split: str, index: int) -> Problem:
        question = entry["question"]
        for text in self.drop_text:
            question = question.replace(text, "")
        prefix, suffix = self.lead_in
        if prefix and question.startswith(prefix) and len(question) > len(prefix):
            question = question[len(prefix):]
        if suffix and question.endswith(suffix) and len(question) > len(suffix):
            question = question[:-len(suffix)]
        prompt = f"{question}\n\n{self.instruction}" if self.instruction else question
        meta = {"dataset": self.dataset, "split": split, "index": index, "entry": entry}
        return Problem(prompt=prompt, answer=str(entry["answer"]), meta=meta)

    # ------------------------------------------------------------------ verifier

    def extract_answer(self, completion: str) -> str | None:
        """Content of the last ``<answer>...</answer>``, else the stripped completion;
        None when that is empty or longer than ``MAX_ANSWER_CHARS``."""
        if not isinstance(completion, str):
            return None
        answer, _ = extract_tagged_answer(completion)
        if not answer or len(answer) > MAX_ANSWER_CHARS:
            return None
        return answer

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        """Named rewards (see the module doc); 0 everywhere when anything goes wrong."""
        scores = guarded(self._score, problem, completion)
        return scores if scores is not None else zero_rewards(self.reward_names)

    def _score(self, problem: Problem, completion: str) -> dict[str, float]:
        rewards = zero_rewards(self.reward_names)
        if not isinstance(completion, str):
            return rewards
        rewards["format"] = float(extract_tagged_answer(completion)[1])
        answer = self.extract_answer(completion)
        if answer is None:
            return rewards
        entry = problem.meta["entry"]
        score = unit_float(guarded(self._train_data.score_answer, answer, entry, default=0.0))
        correct = float(score >= 1.0)
        rewards.update(score=score, correct=correct, reward=score if self.partial_credit else correct)
        return rewards

    def format_sft_target(self, problem: Problem) -> str:
        """The reference completion for supervised warm start: the answer in tags."""
        return problem.answer if self.answer_format == "plain" else f"{_OPEN}{problem.answer}{_CLOSE}"

    def __repr__(self) -> str:
        return (
            f"ReasoningGymTask({self.dataset!r}, seed={self.seed}, eval_seed={self.eval_seed}, "
            f"num_train={self.num_train}, num_eval={self.num_eval}, "
            f"partial_credit={self.partial_credit}, preset={self.preset!r}, **{self.dataset_config!r})"
        )


def _resolve_num_train(num_train: int | None, size: int | None) -> int:
    if num_train is not None and size is not None and num_train != size:
        raise ValueError(f"size is another name for num_train; got num_train={num_train}, size={size}")
    value = num_train if num_train is not None else size if size is not None else 1000
    if int(value) < 0:
        raise ValueError(f"num_train must be >= 0, got {value}")
    return int(value)


def _check_dataset(dataset: str, config: dict[str, Any]) -> None:
    """Raise ValueError for an unknown dataset name or config field."""
    from reasoning_gym.factory import DATASETS

    if dataset not in DATASETS:
        close = difflib.get_close_matches(dataset, list(DATASETS), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown reasoning-gym dataset {dataset!r} ({len(DATASETS)} known, "
            f"see reasoning_gym.factory.DATASETS).{hint}"
        )
    _, config_cls = DATASETS[dataset]
    allowed = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for task 'reasoning_gym:{dataset}'; "
            "allowed: seed, eval_seed, num_train, num_eval, size, partial_credit, instruction, preset, "
            "drop_text, answer_format, "
            f"and the dataset's config fields: {', '.join(allowed)}"
        )
