"""The environment protocol of a multi-turn episode (``../shared/design/agentic.md``, "Recommendation").

An environment is text in, text out; rlvr, not the environment, assembles the token ids:

* ``reset(problem, seed) -> str``: the first prompt text of an episode (a group's G episodes reset with the
  same seed, so they face the same environment);
* ``step(action) -> EnvStep``: the text the policy wrote this turn (its sampled tokens decoded, the turn's stop
  string included, special tokens such as EOS left out) gives the environment's observation, this turn's
  reward and whether the episode is over. The observation is appended after the action and is not trained on
  (it is outside the loss mask); the observation of the last turn is never appended;
* ``stop``: the strings that end the policy's turn besides the model's own stop tokens, read before every turn
  (an environment may change them as the episode goes on);
* ``close()``: release what the environment holds.

An episode ends when ``step`` says done, after ``max_turns`` turns, or when its tokens (the policy's and the
observations') reach the episode's token budget (:mod:`rlvr.rollout.episodes`). Turn rewards sum to the
episode's reward.

Environments are named in a registry (as :mod:`rlvr.algorithms.kl` names its estimators):
:func:`register_env` adds one, :func:`make_env` builds one by name with its options. A user's own class needs no
registration: ``env.name: my_package.envs:Maze`` or ``env.name: path/to/envs.py:Maze`` (:func:`env_class`).

The observation (and the first prompt) may also be a list of chat messages, ``[{"role": "tool", "content":
"282"}]``: rlvr then renders them with the policy's chat template and appends exactly the tokens that template puts
between the end of the policy's turn and the start of its next one (:mod:`rlvr.rollout.chat`). A chat model's
environment returns messages; the built-in character model's environments return text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class EnvStep:
    """What the environment answers to one action."""

    #: appended after the action (not trained on); ignored when the episode ends: text, or chat messages
    observation: str | list[dict] = ""
    reward: float = 0.0  # this turn's reward; an episode's reward is the sum over its turns
    done: bool = False  # the episode is over
    #: anything to log; ``correct`` on the last step is the episode's correctness (the ``correct`` reward
    #: component, accuracy and evaluation read it instead of the task's verifier on the whole transcript)
    info: dict = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    """A multi-turn environment (see the module docstring)."""

    stop: tuple[str, ...]

    def reset(self, problem, seed: int) -> str | list[dict]: ...

    def step(self, action: str) -> EnvStep: ...

    def close(self) -> None: ...


#: environment name -> class (or factory) taking the environment's options as keyword arguments
ENVIRONMENTS: dict[str, type] = {}


def register_env(name: str):
    """Class decorator: make an environment buildable by name (:func:`make_env`)."""

    def wrap(cls):
        if name in ENVIRONMENTS:
            raise ValueError(f"environment {name!r} is already registered")
        ENVIRONMENTS[name] = cls
        return cls

    return wrap


def env_class(name: str):
    """The class (or factory) ``name`` stands for: a registered name, or ``"package.module:Class"`` /
    ``"path/to/file.py:Class"`` (a user's environment, imported); anything else is an error naming the
    registered ones and the spec forms."""
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name]
    if ":" in name:
        from rlvr.utils import load_object

        return load_object(name, "environment class")
    raise ValueError(f"unknown environment {name!r}; registered: {', '.join(sorted(ENVIRONMENTS))}; or a class "
                     "of your own as 'package.module:Class' or 'path/to/file.py:Class'")


def make_env(name: str, given: dict | None = None, **options) -> Environment:
    """A new environment ``name`` (:func:`env_class`) built with ``options``, plus those of ``given`` (what rlvr can
    hand an environment: ``task``, ``tokenizer``) that its class takes."""
    cls = env_class(name)
    if given:
        import inspect

        takes = inspect.signature(cls).parameters
        options = {**{k: v for k, v in given.items() if k in takes}, **options}
    return cls(**options)
