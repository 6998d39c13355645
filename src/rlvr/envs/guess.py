"""``guess``: number guessing with interval feedback (``../shared/design/agentic.md``, section 3 C).

A hidden integer x in ``[lo, hi]`` (0..63 by default) is drawn from the episode's seed, so the G episodes of a
group guess the same number. The prompt is the interval; each turn the policy writes a guess and ``;`` (the
turn's stop string); the environment answers ``>[a,b]`` (x is above: the new interval), ``<[a,b]`` (below) or
``=`` (found: the episode ends). A guess that is not a number inside the current interval gets ``![a,b]`` and
counts. Reward: ``1 - 0.1 (guesses - 1)`` when found within ``max_guesses`` (8), else 0::

    [0,63]  |  31;  |  >[32,63]  |  47;  |  <[32,46]  |  39;  |  =

Its warm start (:meth:`Guess.sft_transcript`) is a guesser that picks uniformly inside the last interval: it
teaches the format and legal guesses, not the strategy (midpoints solve every game in 6 guesses; the random
guesser solves 78% within 8, ``agentic.md``).
"""

from __future__ import annotations

import random
import re

from rlvr.envs.base import EnvStep, register_env

_GUESS = re.compile(r"^\s*([0-9]{1,6})\s*;?\s*$")


@register_env("guess")
class Guess:
    """The environment of one game (see the module docstring)."""

    def __init__(self, task=None, lo: int = 0, hi: int = 63, max_guesses: int = 8):
        if not lo < hi:
            raise ValueError(f"env.options: lo ({lo}) must be below hi ({hi})")
        self.lo0, self.hi0, self.max_guesses = int(lo), int(hi), int(max_guesses)
        self.stop: tuple[str, ...] = (";",)
        self.x = self.lo = self.hi = self.guesses = 0

    def reset(self, problem, seed: int) -> str:
        self.x = random.Random(f"rlvr.guess:{seed}").randint(self.lo0, self.hi0)
        self.lo, self.hi, self.guesses = self.lo0, self.hi0, 0
        return f"[{self.lo},{self.hi}]"

    def step(self, action: str) -> EnvStep:
        self.guesses += 1
        m = _GUESS.match(action)
        g = int(m.group(1)) if m else None
        if g is not None and g == self.x:
            return EnvStep(observation="=", reward=1.0 - 0.1 * (self.guesses - 1), done=True,
                           info={"correct": 1.0, "guesses": self.guesses})
        if self.guesses >= self.max_guesses:
            return EnvStep(reward=0.0, done=True, info={"correct": 0.0, "guesses": self.guesses})
        if g is None or not self.lo <= g <= self.hi:
            return EnvStep(observation=f"![{self.lo},{self.hi}]", info={"illegal": True})
        if self.x > g:
            self.lo = g + 1
            return EnvStep(observation=f">[{self.lo},{self.hi}]")
        self.hi = g - 1
        return EnvStep(observation=f"<[{self.lo},{self.hi}]")

    def sft_transcript(self, problem, rng) -> list[tuple[str, bool]]:
        """A random guesser's game against a random x: the guesses trained, the environment's answers not (the
        warm start's prompt is :meth:`reset`'s interval)."""
        x, lo, hi, out = rng.randint(self.lo0, self.hi0), self.lo0, self.hi0, []
        for n in range(1, self.max_guesses + 1):
            g = rng.randint(lo, hi)
            out.append((f"{g};", True))
            if g == x or n == self.max_guesses:
                out.append(("=" if g == x else "", False))
                break
            lo, hi = (g + 1, hi) if x > g else (lo, g - 1)
            out.append((f"{'>' if x > g else '<'}[{lo},{hi}]", False))
        return [seg for seg in out if seg[0]]

    def close(self) -> None:
        pass
