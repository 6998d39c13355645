"""The ``dataset`` task: your own problems from a file, your chat template, a verifier by name.

Sources (``path``, and ``eval_path`` for a separate eval file), by extension or ``format``:

* ``.jsonl`` / ``.ndjson``: one JSON object per line; ``.json``: a list of objects;
* ``.csv``: a header row, then one row per problem (every value is text);
* ``.parquet``, or a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a
  ``DatasetDict``, whose ``split`` / ``eval_split`` are used): these need the ``datasets`` library
  (``pip install 'rlvr[datasets]'``); nothing is fetched from the hub.

Each row's ``prompt_field`` is the prompt: a string, or a list of ``{"role", "content"}`` messages
(conversational, as in TRL). ``answer_field`` holds the reference answer (not needed with
``verifier: none``). Every column travels with the problem (``Problem.meta["row"]``) and is passed to
user reward functions by name.

Prompt text. With a chat template (``chat_template``: None = when the tokenizer has one, True =
required, False = never), the messages (``system_prompt`` first when given, then the user turn:
the prompt, plus ``instruction`` after a blank line) are rendered with the tokenizer's
``apply_chat_template(..., add_generation_prompt=True, **chat_template_kwargs)``, where
``chat_template_kwargs`` holds the template's own variables (e.g. Qwen3's ``{enable_thinking: false}``;
giving it when no template is applied is an error); a leading BOS token that the tokenizer adds again
when it encodes the text is removed from the rendered text, so a prompt starts with one BOS.
The tokenizer is ``tokenizer`` (a model folder or hub id), which a config fills in with
``model.path`` (``builtin:tiny`` is the built-in character tokenizer, which has no template).
Without a template the prompt is ``system_prompt``, a blank line, the prompt and the instruction.

Split. With ``eval_path`` (or ``eval_split``) the eval problems are that source's, less any whose
prompt is also a train prompt. Otherwise a share ``eval_fraction`` of the distinct prompts goes to
eval by a stable hash of the prompt (the same split on every machine and run; duplicates of a prompt
stay on one side). ``num_train`` / ``num_eval`` keep the first so many of each split.

Rewards. ``correct`` comes from the verifier (:mod:`rlvr.tasks.verifiers`). With
``reward_functions`` (TRL's contract, :mod:`rlvr.rewards.functions`) each function is a named reward
component and ``reward`` is their weighted sum (``reward_weights``), else ``reward`` = ``correct``.
With ``verifier: none``, ``correct`` is 1 when ``reward >= correct_threshold``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlvr.tasks.base import Problem, check_split, guarded, hash_fraction, register_task, zero_rewards

__all__ = ["DatasetTask", "check_chat_template_kwargs", "load_rows", "render_prompt"]

_FORMATS = ("auto", "jsonl", "json", "csv", "parquet", "hf")


def _need_datasets(what: str):
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ValueError(f"reading {what} needs the datasets library: pip install 'rlvr[datasets]'") from None
    return datasets


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet"}.get(suffix, "")


def load_rows(path: str | Path, format: str = "auto", split: str = "train") -> list[dict]:
    """The rows of a JSONL / JSON / CSV / Parquet file or a saved ``datasets`` folder, as dicts.

    Raises:
        ValueError (one line): a missing file, an unknown format, a malformed line (with its number),
            a split that the saved ``DatasetDict`` lacks (with the ones it has).
    """
    path = Path(path).expanduser()
    if format not in _FORMATS:
        raise ValueError(f"dataset format {format!r}; allowed: {', '.join(_FORMATS)}")
    if not path.exists():
        raise ValueError(f"dataset file {str(path)!r} does not exist")
    fmt = _detect_format(path) if format == "auto" else format
    if not fmt:
        raise ValueError(f"dataset file {str(path)!r}: cannot tell its format from the extension; set "
                         "task.options.format to jsonl, json, csv, parquet or hf")
    if fmt == "jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"dataset file {str(path)!r} line {n}: not JSON ({err.msg})") from None
    elif fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"dataset file {str(path)!r}: not JSON ({err.msg} at line {err.lineno}); a file "
                             "with one object per line should end in .jsonl") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list):
            raise ValueError(f"dataset file {str(path)!r}: expected a list of objects")
        rows = data
    elif fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = [dict(r) for r in csv.DictReader(f)]
    elif fmt == "parquet":
        datasets = _need_datasets("Parquet files")
        rows = datasets.Dataset.from_parquet(str(path)).to_list()
    else:
        datasets = _need_datasets("saved datasets folders")
        try:
            data = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise ValueError(f"dataset folder {str(path)!r} is not a saved datasets folder "
                             f"(save_to_disk): {err}") from None
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"dataset folder {str(path)!r} has no split {split!r}; its splits: "
                                 f"{', '.join(data)}")
            data = data[split]
        rows = data.to_list()
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"dataset file {str(path)!r}: row {bad} is {type(rows[bad]).__name__}, expected an object")
    return rows


def _is_messages(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def _load_tokenizer(name: str):
    if name == "builtin:tiny":
        from rlvr.models.tiny import build_char_tokenizer

        return build_char_tokenizer()
    from transformers import AutoTokenizer

    from rlvr.models.load import quiet_transformers

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ValueError(f"task dataset: cannot load the tokenizer {name!r} for its chat template: "
                         f"{' '.join(str(err).split())[:200]}") from None


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


#: apply_chat_template's arguments that :func:`render_prompt` sets itself (not template variables).
_RENDER_ARGUMENTS = ("conversation", "tokenize", "add_generation_prompt", "continue_final_message",
                     "return_dict")


def check_chat_template_kwargs(value: Any) -> dict:
    """``task.options.chat_template_kwargs`` as a dict of template variables (None: none).

    Raises:
        ValueError (one line, naming the option): not a mapping, a key that is not a name, or one of
            the arguments :func:`render_prompt` sets itself.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"task dataset: task.options.chat_template_kwargs must be a mapping of chat template "
                         f"variables, e.g. {{enable_thinking: false}}; got {type(value).__name__} {value!r}")
    bad = [k for k in value if not isinstance(k, str) or not k.isidentifier() or k in _RENDER_ARGUMENTS]
    if bad:
        raise ValueError(f"task dataset: task.options.chat_template_kwargs key {bad[0]!r} is not a template "
                         f"variable (keys are names; {', '.join(_RENDER_ARGUMENTS)} are set by rlvr)")
    return dict(value)


def render_prompt(tokenizer, messages: list[dict], chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
    """``messages`` through the tokenizer's chat template with the generation prompt, as text;
    ``chat_template_kwargs`` are passed to the template as variables (e.g. ``enable_thinking=False``).
    A leading BOS that encoding adds again is dropped (so the encoded prompt holds one BOS)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


@register_task("dataset")
class DatasetTask:
    """Problems from a local dataset, with a verifier chosen by name and optional user reward functions.

    Args (the task's ``task.options``; see the module doc for what each does):
        path: the dataset file or saved ``datasets`` folder (required).
        eval_path: a separate eval source (same format rules).
        format: ``auto`` (from the extension), ``jsonl``, ``json``, ``csv``, ``parquet`` or ``hf``.
        split, eval_split: splits of a saved ``DatasetDict`` (eval_split: None = hash split of ``split``).
        prompt_field, answer_field: the columns holding the prompt and the reference answer.
        system_prompt: a system message put first (chat template) or first paragraph (no template).
        instruction: text appended to the user prompt after a blank line.
        chat_template: None (when the tokenizer has one), True (required) or False (plain text).
        chat_template_kwargs: variables passed to the chat template, e.g. ``{enable_thinking: false}``
            for Qwen3 (``apply_chat_template(..., **chat_template_kwargs)``); an error when no
            template is applied.
        tokenizer: the tokenizer whose template is used (a config fills in ``model.path``).
        eval_fraction: share of distinct prompts sent to eval by the hash split.
        num_train, num_eval: keep at most this many problems of each split (None: all).
        verifier: ``exact``, ``math``, ``regex``, ``code`` or ``none``; verifier_options: its options.
        reward_functions: TRL-contract functions (``module:fn`` / ``file.py:fn`` / ``{function, weight, name}``).
        reward_weights: one weight per reward function (TRL's ``reward_weights``).
        correct_threshold: with ``verifier: none``, ``correct`` = ``reward >= correct_threshold``.
        sft_field: the column holding the reference completion for a warm start (default: the
            verifier's rendering of the answer, e.g. ``\\boxed{answer}`` for math).
    """

    def __init__(
        self,
        path: str = "",
        eval_path: str | None = None,
        format: str = "auto",
        split: str = "train",
        eval_split: str | None = None,
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        system_prompt: str | None = None,
        instruction: str = "",
        chat_template: bool | None = None,
        chat_template_kwargs: dict | None = None,
        tokenizer: str | None = None,
        eval_fraction: float = 0.1,
        num_train: int | None = None,
        num_eval: int | None = None,
        verifier: str = "exact",
        verifier_options: dict | None = None,
        reward_functions: Sequence[Any] = (),
        reward_weights: Sequence[float] | None = None,
        correct_threshold: float = 1.0,
        sft_field: str | None = None,
    ) -> None:
        from rlvr.rewards.functions import RewardFunctions, parse_reward_functions
        from rlvr.tasks.verifiers import make_verifier

        if not path:
            raise ValueError("task 'dataset' needs task.options.path: a JSONL, JSON, CSV or Parquet file or a "
                             "saved datasets folder (see examples/)")
        if not 0.0 <= float(eval_fraction) < 1.0:
            raise ValueError(f"task dataset: eval_fraction must lie in [0, 1), got {eval_fraction!r}")
        for name, value in (("num_train", num_train), ("num_eval", num_eval)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"task dataset: {name} must be a non-negative integer or null, got {value!r}")
        if chat_template not in (None, True, False):
            raise ValueError(f"task dataset: chat_template must be true, false or null (auto), got {chat_template!r}")
        self.chat_template_kwargs = check_chat_template_kwargs(chat_template_kwargs)
        if not isinstance(correct_threshold, (int, float)) or isinstance(correct_threshold, bool) \
                or not math.isfinite(correct_threshold):
            raise ValueError(f"task dataset: correct_threshold must be a finite number, got {correct_threshold!r}")
        self.name = "dataset"
        self.path, self.eval_path = str(path), eval_path
        self.prompt_field, self.answer_field = prompt_field, answer_field
        self.system_prompt, self.instruction = system_prompt, instruction or ""
        self.correct_threshold = float(correct_threshold)
        self.sft_field = sft_field
        self.verifier = make_verifier(verifier, verifier_options)
        self.verifier_name = verifier

        train_rows = load_rows(path, format, split)
        if eval_path is not None:
            eval_rows = load_rows(eval_path, format if format != "hf" or Path(eval_path).is_dir() else "auto",
                                  eval_split or split)
        elif eval_split is not None:
            eval_rows = load_rows(path, format, eval_split)
        else:
            eval_rows = None
        columns = self._check_columns(train_rows, "path") + (self._check_columns(eval_rows, "eval_path")
                                                             if eval_rows else [])
        self.columns = [c for c in dict.fromkeys(columns) if c != prompt_field]

        self.functions = None
        specs = list(reward_functions or [])
        if specs:
            self.functions = RewardFunctions(parse_reward_functions(specs, reward_weights), columns=self.columns)
        elif reward_weights is not None:
            raise ValueError("task dataset: reward_weights without reward_functions")
        if self.verifier is None and self.functions is None:
            raise ValueError("task dataset: verifier 'none' needs reward_functions (nothing would give a reward)")

        self.tokenizer_name = tokenizer
        self._tokenizer = None
        wants_template = chat_template is not False
        if wants_template and tokenizer is not None:
            self._tokenizer = _load_tokenizer(tokenizer)
            if getattr(self._tokenizer, "chat_template", None) is None:
                if chat_template:
                    raise ValueError(f"task dataset: chat_template=true, but the tokenizer {tokenizer!r} has "
                                     "no chat template; set chat_template=false for plain-text prompts")
                self._tokenizer = None
        elif chat_template:
            raise ValueError("task dataset: chat_template=true needs task.options.tokenizer (a config fills it "
                             "in from model.path)")
        self.uses_chat_template = self._tokenizer is not None
        if self.chat_template_kwargs and not self.uses_chat_template:
            why = ("chat_template is false" if chat_template is False else
                   "task.options.tokenizer is not set" if tokenizer is None else
                   f"the tokenizer {tokenizer!r} has no chat template")
            raise ValueError(f"task dataset: task.options.chat_template_kwargs is set, but no chat template is "
                             f"applied ({why}); remove chat_template_kwargs, or use a model whose tokenizer has "
                             "a chat template")
        if not self.uses_chat_template and any(_is_messages(r.get(prompt_field)) for r in train_rows[:100]):
            raise ValueError(f"task dataset: the {prompt_field!r} column holds chat messages, but there is no chat "
                             f"template to render them (tokenizer {tokenizer!r}); use a model whose tokenizer "
                             "has one, or plain-text prompts")

        extras = tuple(self.verifier.extra_names) if self.verifier is not None else ()
        fn_names = self.functions.names if self.functions is not None else ()
        clash = sorted(set(fn_names) & set(extras))
        if clash:
            raise ValueError(f"task dataset: reward function name(s) {', '.join(clash)} clash with the "
                             f"{verifier} verifier's components; rename them ({{function: ..., name: ...}})")
        self.reward_names = ("reward", "correct", *extras, *fn_names,
                             *(("function_errors",) if fn_names else ()))

        train = [self._problem(r, i, "train") for i, r in enumerate(train_rows)]
        if eval_rows is None:
            evals = [p for p in train if hash_fraction(p.meta["key"]) < eval_fraction]
            train = [p for p in train if hash_fraction(p.meta["key"]) >= eval_fraction]
        else:
            keys = {p.meta["key"] for p in train}
            evals, seen = [], set()
            for i, r in enumerate(eval_rows):
                p = self._problem(r, i, "eval")
                if p.meta["key"] not in keys and p.meta["key"] not in seen:
                    seen.add(p.meta["key"])
                    evals.append(p)
        self._splits = {"train": train[:num_train] if num_train is not None else train,
                        "eval": evals[:num_eval] if num_eval is not None else evals}
        if not self._splits["train"]:
            raise ValueError(f"task dataset: no training problems in {self.path!r} (after the eval split)")

    # ------------------------------------------------------------------ problems

    def _check_columns(self, rows: list[dict], which: str) -> list[str]:
        where = self.path if which == "path" else self.eval_path
        if not rows:
            raise ValueError(f"task dataset: {which} {where!r} holds no rows")
        columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
        need = [self.prompt_field] + ([self.answer_field] if self.verifier is not None else [])
        for field in need:
            missing = next((i for i, r in enumerate(rows) if r.get(field) is None), None)
            if missing is not None:
                kind = "prompt_field" if field == self.prompt_field else "answer_field"
                raise ValueError(f"task dataset: row {missing} of {where!r} has no {field!r} column (the "
                                 f"{kind}); its columns: {', '.join(map(str, columns))}; set task.options.{kind}")
        return columns

    def _messages(self, raw: Any) -> list[dict]:
        if _is_messages(raw):
            messages = [dict(m) for m in raw]
            if self.instruction:
                last = max(i for i, m in enumerate(messages) if m["role"] == "user") if any(
                    m["role"] == "user" for m in messages) else None
                if last is not None:
                    messages[last]["content"] = f"{messages[last]['content']}\n\n{self.instruction}"
            if self.system_prompt and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return messages
        user = f"{raw}\n\n{self.instruction}" if self.instruction else str(raw)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": user}]

    def _prompt_text(self, raw: Any) -> str:
        if self._tokenizer is not None:
            return render_prompt(self._tokenizer, self._messages(raw), self.chat_template_kwargs)
        text = f"{raw}\n\n{self.instruction}" if self.instruction else str(raw)
        return f"{self.system_prompt}\n\n{text}" if self.system_prompt else text

    def _problem(self, row: dict, index: int, split: str) -> Problem:
        raw = row[self.prompt_field]
        key = json.dumps(raw, sort_keys=True, ensure_ascii=False) if not isinstance(raw, str) else raw
        answer = row.get(self.answer_field)
        user = [m for m in self._messages(raw) if m.get("role") == "user"]
        meta = {"row": row, "index": index, "split": split, "key": key,
                "conversational": _is_messages(raw),
                # the last user turn as written, before any chat template: what a reward model or judge
                # with its own template is shown (rlvr.rewards.components.question_of)
                "question": str(user[-1].get("content", "")) if user else str(raw)}
        return Problem(prompt=self._prompt_text(raw), answer="" if answer is None else str(answer), meta=meta)

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` (all when None), in file order."""
        check_split(split)
        problems = self._splits[split]
        return list(problems if n is None else problems[: max(0, n)])

    # ------------------------------------------------------------------ verifier

    def extract_answer(self, completion: str) -> str | None:
        if self.verifier is None:
            return completion.strip() or None if isinstance(completion, str) else None
        return guarded(self.verifier.extract, completion)

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        """Named rewards for one completion (see :meth:`score_batch`)."""
        return self.score_batch([problem], [completion])[0]

    def score_batch(self, problems: list[Problem], completions: list[str]) -> list[dict[str, float]]:
        """Named rewards for a batch: the verifier per sample, user reward functions once per batch."""
        out = []
        for p, c in zip(problems, completions):
            scores = zero_rewards(self.reward_names)
            if self.verifier is not None:
                got = guarded(self.verifier.score, p.answer, c)
                if got is not None:
                    scores.update(got)
                scores["reward"] = scores["correct"]
            out.append(scores)
        if self.functions is not None and problems:
            conversational = [p.meta.get("conversational", False) for p in problems]
            prompts = [p.meta["row"].get(self.prompt_field, p.prompt) if "row" in p.meta else p.prompt
                       for p in problems]
            comps = [[{"role": "assistant", "content": c}] if conv else c
                     for c, conv in zip(completions, conversational)]
            columns = {col: [p.meta.get("row", {}).get(col) for p in problems] for col in self.columns}
            components, rewards, failures = self.functions(prompts, comps, columns,
                                                           labels=[p.prompt for p in problems])
            for i, scores in enumerate(out):
                for name, values in components.items():
                    scores[name] = values[i]
                scores["function_errors"] = failures[i]
                scores["reward"] = rewards[i]
                if self.verifier is None:
                    scores["correct"] = float(rewards[i] >= self.correct_threshold)
        return out

    def format_sft_target(self, problem: Problem) -> str:
        """The reference completion for a supervised warm start (``sft_field``, else the verifier's)."""
        if self.sft_field is not None:
            value = problem.meta.get("row", {}).get(self.sft_field)
            if value is None:
                raise ValueError(f"task dataset: a row has no {self.sft_field!r} column (sft_field)")
            return str(value)
        if self.verifier is None:
            raise ValueError("task dataset: verifier 'none' gives no reference completion for a warm start; set "
                             "task.options.sft_field or model.warm_start=false")
        return self.verifier.sft_target(problem.answer)

    def __repr__(self) -> str:
        fns = f", reward_functions={list(self.functions.names)}" if self.functions is not None else ""
        return (f"DatasetTask({self.path!r}, verifier={self.verifier_name!r}, train={len(self._splits['train'])}, "
                f"eval={len(self._splits['eval'])}, chat_template={self.uses_chat_template}{fns})")
