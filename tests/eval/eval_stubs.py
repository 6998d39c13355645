"""A stub rollout engine and a stub task for fast, model-free tests of eval and TTS bookkeeping."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from rlvr.rollout.base import Rollout, SamplingParams
from rlvr.tasks.base import Problem


class StubEngine:
    """Returns ``policy(prompt, draw)`` for each requested completion and records every call.

    Each completion "costs" ``len(text) + 1`` generated tokens (the text plus EOS) and each prompt
    ``len(prompt) + 1`` prompt tokens (plus BOS), so token accounting can be checked exactly.
    ``draw`` is a float from torch's global RNG, so seeding decides the completions.
    """

    def __init__(self, policy: Callable[[str, float], str]):
        self.policy = policy
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.policy_version = 0
        self.tokenizer = SimpleNamespace(pad_token_id=0)
        self.generated_tokens = 0  # over all calls

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout:
        self.calls.append((list(prompts), params))
        texts, index, plens = [], [], []
        for i, prompt in enumerate(prompts):
            for _ in range(params.n):
                texts.append(self.policy(prompt, float(torch.rand(()))))
                index.append(i)
                plens.append(len(prompt) + 1)
        B, T, P = len(texts), max([len(t) + 1 for t in texts] + [1]), max(plens + [1])
        mask = torch.zeros(B, T, dtype=torch.long)
        pmask = torch.zeros(B, P, dtype=torch.long)
        for r, (t, pl) in enumerate(zip(texts, plens)):
            mask[r, : len(t) + 1] = 1
            pmask[r, P - pl:] = 1
        self.generated_tokens += int(mask.sum())
        return Rollout(prompt_ids=pmask.clone(), prompt_mask=pmask, completion_ids=mask.clone(),
                       completion_mask=mask, rollout_logp=torch.zeros(B, T), finish_reason=["stop"] * B,
                       prompt_index=torch.tensor(index, dtype=torch.long), texts=texts, policy_version=0,
                       num_generated_tokens=int(mask.sum()))


class StubTask:
    """Answers are the completion text itself (stripped); ``""`` means no answer.

    Aggregation prompt: ``prompt|c1|c2|...|=>`` with the candidates verbatim.
    """

    name = "stub"
    reward_names = ("reward", "correct")

    def __init__(self, n: int = 6):
        self._problems = [Problem(prompt=f"q{i}=", answer=str(i)) for i in range(n)]

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        return list(self._problems[:n] if n is not None else self._problems)

    def extract_answer(self, completion: str) -> str | None:
        return completion.strip() or None

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        c = float(completion.strip() == problem.answer)
        return {"reward": c, "correct": c}

    def aggregation_prompt(self, problem: Problem, candidates: list[str]) -> str:
        return problem.prompt + "|" + "".join(c + "|" for c in candidates) + "=>"

    def sft_candidates(self, problem, k, rng):
        return [problem.answer] * k


def candidates_of(prompt: str) -> list[str]:
    """The candidates shown in a stub aggregation prompt."""
    return prompt.split("|")[1:-1]
