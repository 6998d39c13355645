"""TRL's tool contract, unchanged: an ``environment_factory`` class or plain tool functions, in an rlvr episode.

TRL's ``GRPOTrainer(environment_factory=..., tools=[...])`` (TRL >= 1.0) lets the model call Python functions through
its chat template. The same code runs here, as ``env.name: trl``::

    env:
      name: trl
      options:
        environment_factory: my_envs:Wordle     # or path/to/my_envs.py:Wordle
        tools: [my_tools:search]                # plain functions, beside (or instead of) the class's methods

* **The class** (TRL's contract): one instance per episode; its public methods (not ``reset``, not
  ``get_reward``, no leading ``_``) are the tools, described to the model by their signatures and Google-style
  docstrings (``transformers.utils.get_json_schema``, as TRL does); ``reset(**row)`` starts an episode with the
  problem's dataset row (``Problem.meta["row"]``, else ``prompt`` and ``answer``) and may return text, appended to
  the user's message; ``get_reward()``, when defined, scores the episode from the environment's state.
* **The episode**: the user's message (the problem's question, ``meta["question"]``, else its prompt) rendered
  with the policy's chat template and the tools. The model's turn ends at its end-of-turn token. A turn with tool
  calls gets their results as ``tool`` messages, rendered by the template (:mod:`rlvr.rollout.chat`), and the model
  goes on; a turn without one is the answer and ends the episode. A tool that raises answers
  ``{"error": "..."}`` (counted in ``info["tool_failures"]``), as in TRL; async tools are run to completion.
* **Tool calls** are read by the tokenizer's own parser when it has one (a ``response_template``, transformers'
  ``parse_response``, which recent checkpoints ship and TRL's ``add_response_schema`` sets), else in the Hermes
  format that Qwen2.5/Qwen3 and most open chat models' templates teach:
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (:func:`parse_tool_calls`). A call that does not
  parse answers an error message and counts as a failure.
* **Rewards**: with ``get_reward``, each step's reward is the change in ``get_reward()`` since the last step, so
  the turn rewards sum to ``get_reward()`` at the episode's end however it ends (done, ``max_turns``, token
  budget). Without it, the task's verifier scores the answer turn (``info["correct"]``); an episode that never
  answers scores 0.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re

from rlvr.envs.base import EnvStep, register_env
from rlvr.utils import load_object

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[list[dict], list[str]]:
    """The calls ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in ``text``, in order, as
    ``{"name", "arguments"}`` dicts, and an error message for each block that is not such a call."""
    calls, errors = [], []
    for block in _TOOL_CALL.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError as err:
            errors.append(f"invalid tool call JSON: {err.msg}")
            continue
        args = call.get("arguments", {}) if isinstance(call, dict) else None
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(args, dict):
            errors.append('a tool call is {"name": <tool>, "arguments": {...}}')
            continue
        calls.append({"name": call["name"], "arguments": args})
    return calls, errors


def tool_methods(instance) -> list:
    """TRL's rule: the public methods of the instance's class, ``reset`` and ``get_reward`` excepted."""
    return [getattr(instance, name) for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


@register_env("trl")
class TRLEnvironment:
    """A TRL ``environment_factory`` class and/or tool functions as an rlvr environment (module docstring)."""

    def __init__(self, task=None, environment_factory: str = "", tools: list[str] | tuple[str, ...] = (),
                 system: str = "", chat_template_kwargs: dict | None = None, tokenizer=None):
        if not environment_factory and not tools:
            raise ValueError("env.options: the trl environment needs environment_factory ('package.module:Class' "
                             "or 'path/to/file.py:Class') and/or tools (['package.module:function', ...])")
        self.task, self.system = task, system
        self.parser = tokenizer if getattr(tokenizer, "response_template", None) else None  # its parse_response
        self.instance = load_object(environment_factory, "environment factory")() if environment_factory else None
        if self.instance is not None and not callable(getattr(self.instance, "reset", None)):
            raise ValueError(f"env.options.environment_factory {environment_factory!r}: an environment needs a "
                             "reset method (TRL's contract)")
        functions = [load_object(spec, "tool function") for spec in tools]
        functions += tool_methods(self.instance) if self.instance is not None else []
        self.functions = {f.__name__: f for f in functions}
        if not self.functions:
            raise ValueError(f"env.options: {environment_factory or tools!r} offers no tools (public methods or "
                             "functions)")
        self.tools = list(self.functions.values())  # what the chat template renders (their JSON schemas)
        if chat_template_kwargs is None:
            chat_template_kwargs = getattr(task, "chat_template_kwargs", None)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.stop: tuple[str, ...] = ()  # the model's own end of turn
        self.problem, self.calls, self.failures, self.scored = None, 0, 0, 0.0

    def reset(self, problem, seed: int) -> list[dict]:
        self.problem, self.calls, self.failures, self.scored = problem, 0, 0, 0.0
        meta = problem.meta or {}
        question = str(meta.get("question", problem.prompt))
        if self.instance is not None:
            row = meta.get("row") or {"prompt": question, "answer": problem.answer}
            extra = self.instance.reset(**row)
            if isinstance(extra, str) and extra:
                question += extra
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": question}]

    def step(self, action: str) -> EnvStep:
        calls, errors = self._parse(action)
        if not calls and not errors:  # the answer
            if self._owns_reward():
                return EnvStep(reward=self._reward_change(), done=True, info=self._info())
            scored = self.task.score(self.problem, action) if self.task is not None else {"reward": 0.0, "correct": 0}
            return EnvStep(reward=float(scored.get("reward", scored.get("correct", 0.0))), done=True,
                           info={**self._info(), "correct": scored.get("correct", 0)})
        messages = []
        for error in errors:
            self.failures += 1
            messages.append({"role": "tool", "name": "error", "content": json.dumps({"error": error})})
        for call in calls:
            self.calls += 1
            messages.append({"role": "tool", "name": call["name"], "content": self._call(call)})
        reward = self._reward_change() if self._owns_reward() else 0.0
        return EnvStep(observation=messages, reward=reward, info=self._info())

    def _parse(self, action: str) -> tuple[list[dict], list[str]]:
        """The turn's tool calls and errors: the tokenizer's parser, else the Hermes format."""
        if self.parser is None:
            return parse_tool_calls(action)
        try:
            message = self.parser.parse_response(action, prefix="", tools=self.tools)
        except ValueError as err:  # a call region that does not parse (e.g. its JSON)
            return [], [f"invalid tool call: {str(err).splitlines()[0]}"]
        calls, errors = [], []
        for call in message.get("tool_calls") or []:
            fn = call.get("function", call) if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments", {}), dict):
                calls.append({"name": fn["name"], "arguments": fn.get("arguments", {})})
            else:
                errors.append('a tool call is {"name": <tool>, "arguments": {...}}')
        return calls, errors

    def _call(self, call: dict) -> str:
        fn = self.functions.get(call["name"])
        try:
            if fn is None:
                raise ValueError(f"Tool {call['name']} not found.")
            result = fn(**call["arguments"])
            if inspect.isawaitable(result):
                result = asyncio.run(result)
        except Exception as err:  # noqa: BLE001 - the model's call failed; it reads why, as in TRL
            self.failures += 1
            result = {"error": str(err)}
        return result if isinstance(result, str) else str(result)

    def _owns_reward(self) -> bool:
        return self.instance is not None and callable(getattr(self.instance, "get_reward", None))

    def _reward_change(self) -> float:
        now = self.instance.get_reward()
        if inspect.isawaitable(now):
            now = asyncio.run(now)
        change, self.scored = float(now) - self.scored, float(now)
        return change

    def _info(self) -> dict:
        return {"calls": self.calls, "tool_failures": self.failures}

    def close(self) -> None:
        close = getattr(self.instance, "close", None)
        if callable(close):
            close()
