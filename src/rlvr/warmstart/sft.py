"""Supervised warm start: teach the model the task's reference answers before RL.

``rlvr sft`` (and the first RL run of a config with ``model.warm_start: true``) trains the built-in
tiny model on ``prompt -> reference answer + EOS`` pairs, with the loss on the answer tokens only,
and caches the result as a Hugging Face checkpoint folder keyed by everything that shapes it.

Stopping rule. With ``sft.target_accuracy`` set, training stops at the first validation check
(every ``sft.eval_every`` steps) whose greedy accuracy reaches the target, or at ``sft.steps``
(the cap). The validation problems are ``sft.val_problems`` distinct prompts carved from the
task's train split by a salted prompt hash (:func:`validation_split`): every train problem on the
validation side is left out of SFT, and no eval prompt is a validation prompt. A fixed step count
lands in a different place on every machine, because the tiny model's accuracy climbs steeply once
it "clicks" and floating-point differences move the click; a target on a fixed validation set
makes the warm start's competence, not its step count, the thing that is reproduced. Without
``target_accuracy``, exactly ``sft.steps`` steps run on all train problems, as before (and such
warm starts keep their cache keys).

What a build reached (rule, steps taken, validation accuracy per check, minutes, peak memory) is
written beside the cached model as ``warm_start.json``; :func:`warm_start_record` reads it back.

Time bound. After its first few steps (:data:`ESTIMATE_AFTER`) a warm start times itself and one
validation check and logs ``warm start: about N min (S steps at X s/step ...)``; when that exceeds
``sft.max_minutes`` it warns with what would make it cheaper (a preset, shorter prompts, fewer steps,
a smaller batch), or with ``sft.over_budget=stop`` stops there (:class:`WarmStartBudgetError`) before
the time is spent. A warm start that ends at its cap below its target says so with the value it
reached, and RL starts with a warning that most groups will have no reward variance.

With ``sft.aggregation_ratio > 0`` a share of each batch becomes RSA aggregation examples (arXiv
2509.26626): the task's aggregation prompt over 1..``sft.aggregation_k`` noisy candidates
(``task.sft_candidates``) with the reference completion as target, so that a tiny model can read
the aggregation format at test time (``rlvr tts``) and in aggregation-aware RL.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlvr.models.load import BUILTIN_TINY
from rlvr.models.logprobs import completion_logits, token_logprobs
from rlvr.models.tiny import TINY_ARCH, build_char_tokenizer, build_tiny_model, save_tiny
from rlvr.optim import make_optimizer
from rlvr.records.progress import StepProgress

#: Tokens (rows x padded length) one forward/backward of the warm start holds at most: the batch of a task
#: with long prompts is cut into micro-batches, so peak memory follows this bound, not sft.batch_size x the
#: prompt length (the gradient is the whole batch's, to float reassociation). A short-prompt batch (the
#: arithmetic recipes: 128 rows x ~20 tokens) is one micro-batch: the computation is the plain one.
MICRO_TOKENS = 8192

#: Prompts longer than this (characters, on average) are named as a cost in the over-budget advice.
LONG_PROMPT_CHARS = 40

#: Steps a warm start runs before it estimates its duration (the first one pays one-time costs and is not timed).
ESTIMATE_AFTER = 4


class WarmStartBudgetError(ValueError):
    """The warm start's estimate exceeds ``sft.max_minutes`` with ``sft.over_budget=stop``. A ``ValueError``:
    the command line prints it as one line and exits 2."""


def peak_memory_gib() -> float:
    """Peak resident memory of this process so far (GiB; ``ru_maxrss`` is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def duration_estimate(steps: int, per_step_s: float, check_s: float = 0.0, eval_every: int = 0) -> float:
    """Seconds for ``steps`` optimizer steps at ``per_step_s`` each, plus a validation check of ``check_s``
    every ``eval_every`` steps (0: none) and one at the end."""
    checks = (steps // eval_every + 1) if eval_every > 0 else 0
    return steps * per_step_s + checks * check_s


def budget_advice(task, sft_cfg, per_step_s: float, problems: list) -> str:
    """What would make a warm start cheaper: a preset, shorter prompts, fewer steps, a smaller batch."""
    tips = []
    if getattr(task, "preset", "absent") is None and getattr(task, "name", "").startswith("reasoning_gym:"):
        tips.append("the tiny preset (task.options.preset=tiny: shorter prompts, plain answers)")
    chars = sum(len(p.prompt) for p in problems[:256]) / len(problems[:256]) if problems else 0.0
    if chars > LONG_PROMPT_CHARS:
        tips.append(f"shorter prompts (they average {chars:.0f} characters; task.options.drop_text=... removes "
                    "fixed text)")
    fits = int(sft_cfg.max_minutes * 60 / per_step_s) if per_step_s > 0 else sft_cfg.steps
    if fits < sft_cfg.steps:
        tips.append(f"fewer steps (sft.steps={max(1, fits)} fits {sft_cfg.max_minutes:g} min)")
    if sft_cfg.batch_size > 16:
        tips.append(f"a smaller batch (sft.batch_size={sft_cfg.batch_size // 2})")
    return "; ".join(tips)


#: What the warm start's progress shows: the training loss and the last validation check.
SFT_FIELDS = (("loss", "loss"), ("val", "val"))

#: The record of a warm-start build, beside its cached checkpoint.
RECORD_FILE = "warm_start.json"
#: Part of the cache key while a target is set; bump it when the rule or the validation split
#: (salt, fraction, selection) changes, so caches built by an older rule are not reused.
STOP_RULE = "first-check-at-target/v1"
#: Salt of the hash that picks validation prompts (independent of the train/eval split's hash).
_VALIDATION_SALT = "rlvr.sft.validation:"
#: Share of the prompts on the validation side (left out of the warm start's training).
VALIDATION_FRACTION = 0.1


def cache_root() -> Path:
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


def warm_start_key(task_name: str, task_options: dict, sft: dict, arch: dict) -> str:
    import rlvr

    blob = json.dumps({"task": task_name, "options": task_options, "sft": sft, "arch": arch,
                       "version": rlvr.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def completion_end_id(tokenizer, task) -> int:
    """The token a reference completion ends with: the chat template's end of turn when the task
    renders its prompts with the template (``<|im_end|>`` for ChatML, even where ``eos_token`` is
    ``<|endoftext|>``), else the tokenizer's EOS. Either is a stop token of the model
    (:mod:`rlvr.rollout.stops`), so a completion learned this way ends where the sampler stops it."""
    from rlvr.rollout.stops import end_of_turn_token_id

    if getattr(task, "uses_chat_template", False):
        eot = end_of_turn_token_id(tokenizer)
        if eot is not None:
            return eot
    return tokenizer.eos_token_id


def encode_sft_batch(tokenizer, problems: list, targets: list, end_id: int | None = None):
    """Left-padded prompts and right-padded targets (``end_id`` appended, default EOS), as the rollout
    engine lays them out. A target is a text, or a multi-turn transcript (:func:`encode_sft_transcripts`:
    here its segments are joined, all trained)."""
    return encode_sft_transcripts(tokenizer, problems, targets, end_id)[:4]


def encode_sft_transcripts(tokenizer, problems: list, targets: list, end_id: int | None = None):
    """:func:`encode_sft_batch` with a fifth tensor, the loss mask: a target may be a multi-turn transcript,
    ``[(text, trained), ...]``, each segment tokenized on its own (as an episode's ids are: the policy's turns and
    the environment's observations apart) and trained on only where ``trained`` (the policy's parts, and the
    ``end_id`` after the last)."""
    end_id = tokenizer.eos_token_id if end_id is None else end_id
    enc = tokenizer([p.prompt for p in problems], return_tensors="pt", padding=True, padding_side="left")
    tgt, train = [], []
    for t in targets:
        segments = [(t, True)] if isinstance(t, str) else list(t)
        ids, flags = [], []
        for text, trained in segments:
            part = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += part
            flags += [int(bool(trained))] * len(part)
        tgt.append(ids + [end_id])
        train.append(flags + [1])
    T = max(len(t) for t in tgt)
    ids = torch.full((len(tgt), T), tokenizer.pad_token_id)
    mask = torch.zeros((len(tgt), T), dtype=torch.long)
    loss_mask = torch.zeros((len(tgt), T), dtype=torch.long)
    for i, (t, f) in enumerate(zip(tgt, train)):
        ids[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = 1
        loss_mask[i, :len(t)] = torch.tensor(f)
    return enc["input_ids"], enc["attention_mask"], ids, mask, loss_mask


def sft_batch(task, batch: list, aggregation_ratio: float, aggregation_k: int,
              rng: random.Random) -> tuple[list, list[str]]:
    """Prompts (as Problems) and targets of one SFT batch; a share ``aggregation_ratio`` of the rows
    is turned into aggregation examples over ``1..aggregation_k`` noisy candidates."""
    from rlvr.tasks.base import Problem, aggregation_prompt

    if hasattr(task, "sft_problem"):  # an environment's transcripts start from the environment's prompt
        batch = [task.sft_problem(p) for p in batch]
    targets = [task.format_sft_target(p) for p in batch]
    if aggregation_ratio <= 0:
        return batch, targets
    if not hasattr(task, "sft_candidates"):
        raise ValueError(f"sft.aggregation_ratio > 0 needs a task with sft_candidates(); "
                         f"{type(task).__name__} has none")
    rows = []
    for p in batch:
        if rng.random() < aggregation_ratio:
            candidates = task.sft_candidates(p, rng.randint(1, aggregation_k), rng)
            p = Problem(prompt=aggregation_prompt(task, p, candidates), answer=p.answer, meta=p.meta)
        rows.append(p)
    return rows, targets


def is_validation_prompt(prompt: str) -> bool:
    """Whether ``prompt`` is on the warm start's validation side (a salted prompt hash, seed-free)."""
    from rlvr.tasks.base import hash_fraction

    return hash_fraction(_VALIDATION_SALT + prompt) < VALIDATION_FRACTION


def validation_split(task, n: int) -> tuple[list, list]:
    """``(validation, train)``: the warm start's validation problems and what it trains on.

    Built like the arithmetic task's own eval split: a share ``VALIDATION_FRACTION`` of the prompts is
    put on the validation side by a salted prompt hash (:func:`is_validation_prompt`; independent of
    the train/eval hash and of seeds); every train problem with such a prompt is left out of SFT, and
    the validation set is the first ``n`` distinct of them in train-split order (so they follow the
    task's problem distribution, as eval problems do). Eval prompts are never validation prompts.
    Fewer than ``n`` when the side holds fewer distinct prompts (small problem spaces).
    """
    train = task.problems("train")
    eval_prompts = {p.prompt for p in task.problems("eval")}
    side = {p.prompt: is_validation_prompt(p.prompt) for p in train}
    first: dict[str, object] = {}
    for p in train:
        if side[p.prompt] and p.prompt not in eval_prompts:
            first.setdefault(p.prompt, p)
    rest = [p for p in train if not side[p.prompt]]
    if not first or not rest:
        raise ValueError(f"sft.target_accuracy needs a validation split, but the train split's "
                         f"{len(side)} distinct prompts give {len(first)} validation and {len(rest)} "
                         "training problems; set sft.target_accuracy=null (fixed sft.steps)")
    return list(first.values())[:n], rest


def greedy_accuracy(model, tokenizer, task, problems: list, batch_size: int = 512) -> float:
    """Exact-match accuracy of greedy completions, long enough for the longest reference answer + EOS.

    Runs under a forked RNG, so a validation check leaves the training stream exactly as it was.
    """
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.hf import HFRolloutEngine

    if not problems:
        return 0.0
    longest = max(len(tokenizer(task.format_sft_target(p), add_special_tokens=False)["input_ids"])
                  for p in problems)
    engine = HFRolloutEngine(model, tokenizer, batch_size=batch_size)
    with torch.random.fork_rng(devices=[]):
        out = engine.generate([p.prompt for p in problems],
                              SamplingParams(temperature=0, max_new_tokens=longest + 1, n=1))
    return sum(task.score(p, t)["correct"] > 0 for p, t in zip(problems, out.texts)) / len(problems)


def reference_probability(model, tokenizer, task, problems: list, batch_size: int = 512) -> float:
    """Mean probability, at temperature 1, of sampling exactly the reference completion (answer + EOS).

    ``mean_x exp(sum_t log pi(y*_t | x, y*_<t))``: the expected exact-match reward of one sample,
    computed by one teacher-forced forward, so it has no sampling noise, and it moves smoothly with
    training, where greedy accuracy jumps when argmaxes flip. (A lower bound of the sampled accuracy
    where a verifier accepts other strings too.)
    """
    if not problems:
        return 0.0
    was_training = model.training
    model.eval()
    total = 0.0
    end_id = completion_end_id(tokenizer, task)
    with torch.no_grad():
        for i in range(0, len(problems), batch_size):
            chunk = problems[i:i + batch_size]
            p_ids, p_mask, c_ids, c_mask = encode_sft_batch(tokenizer, chunk, [task.format_sft_target(p) for p in chunk],
                                                            end_id)
            logp = token_logprobs(completion_logits(model, p_ids, p_mask, c_ids, c_mask), c_ids)
            total += torch.exp((logp * c_mask).sum(-1)).sum().item()
    model.train(was_training)
    return total / len(problems)


#: What the warm start's stopping rule can measure on the validation split (``sft.target_metric``).
VALIDATION_METRICS = {
    "greedy_accuracy": greedy_accuracy,
    "reference_probability": reference_probability,
}


#: Metrics that warm starts were cached with before ``sft.target_metric`` existed: left out of the
#: key, so those caches keep their keys.
UNKEYED_METRICS = frozenset({"greedy_accuracy"})


@dataclass
class SFTResult:
    """What a warm-start training run did: the loss per step and the validation checks."""

    losses: list[float] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)  # {"step": s, "val_accuracy": a}
    reached_target: bool | None = None  # None: no target

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def val_accuracy(self) -> float | None:
        return self.checks[-1]["val_accuracy"] if self.checks else None


def train_sft(model, tokenizer, task, steps: int, lr: float, batch_size: int, warmup_steps: int,
              seed: int = 0, progress: bool = True, aggregation_ratio: float = 0.0,
              aggregation_k: int = 4, problems: list | None = None, validate=None, eval_every: int = 0,
              target_accuracy: float | None = None, estimate=None) -> SFTResult:
    """Cross-entropy on reference answers of ``problems`` (default: the task's train split).

    ``validate()`` (an accuracy in [0, 1]) is called every ``eval_every`` steps; with
    ``target_accuracy`` set, training stops at the first check that reaches it, else after ``steps``
    steps (the cap), where one last check is made if none fell there. ``progress``: a bar on a
    terminal, a status line every few steps otherwise (:class:`~rlvr.records.progress.StepProgress`).
    ``estimate(per_step_s, check_s)`` is called once, after :data:`ESTIMATE_AFTER` steps, with the time of
    a step (steps 2.. timed) and of one validation check (0 without ``validate``; that check is not
    recorded); it may raise to stop the warm start there.
    """
    if target_accuracy is not None and (validate is None or eval_every < 1):
        raise ValueError("target_accuracy needs validate and eval_every >= 1")
    problems = task.problems("train") if problems is None else problems
    rng = random.Random(f"rlvr.sft.aggregation:{seed}")
    optimizer, scheduler = make_optimizer(model, lr, 0.0, (0.9, 0.98), warmup_steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    result = SFTResult(reached_target=None if target_accuracy is None else False)

    def check(step: int) -> float:
        acc = float(validate())
        result.checks.append({"step": step, "val_accuracy": acc})
        model.train()
        return acc

    # a bar on a terminal, a status line every few steps in a log (make run > log), nothing when off
    bar = StepProgress(total=steps, desc="warm start (SFT)", enabled=progress, fields=SFT_FIELDS)
    end_id = completion_end_id(tokenizer, task)
    first_done = None  # when step 1 ended: steps 2.. are timed for the estimate
    for _ in range(steps):
        idx = torch.randint(len(problems), (batch_size,), generator=g).tolist()
        batch, targets = sft_batch(task, [problems[i] for i in idx], aggregation_ratio, aggregation_k, rng)
        p_ids, p_mask, c_ids, c_mask, loss_mask = encode_sft_transcripts(tokenizer, batch, targets, end_id)
        optimizer.zero_grad(set_to_none=True)
        loss = sft_backward(model, p_ids, p_mask, c_ids, c_mask, loss_mask=loss_mask)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        if result.steps == 1:
            first_done = time.perf_counter()
        if estimate is not None and result.steps == ESTIMATE_AFTER and steps > ESTIMATE_AFTER:
            per_step = (time.perf_counter() - first_done) / (ESTIMATE_AFTER - 1)
            check_s = 0.0
            if validate is not None and eval_every > 0:
                t = time.perf_counter()
                validate()
                model.train()
                check_s = time.perf_counter() - t
            estimate(per_step, check_s)
        stop = False
        if validate is not None and eval_every > 0 and result.steps % eval_every == 0:
            acc = check(result.steps)
            stop = target_accuracy is not None and acc >= target_accuracy
        bar.update(result.steps, {"loss": result.losses[-1], "val": result.val_accuracy})
        if stop:
            result.reached_target = True
            break
    bar.close()
    if validate is not None and (not result.checks or result.checks[-1]["step"] != result.steps):
        check(result.steps)
    return result


def below_target_warning(metric: str, reached: float | None, target: float | None) -> str:
    """The warning RL starts with after a warm start that stopped at its cap below its target."""
    value = "?" if reached is None else f"{reached:.3f}"
    return (f"warning: the warm start did not reach its target (validation {metric} {value} < {target}): RL starts "
            "from a model that rarely answers right, so expect most groups to have the same reward for every "
            "sample (zero variance: no gradient) until it does; an easier task (task.options) or more warm-start "
            "steps (sft.steps) help")


def sft_backward(model, p_ids, p_mask, c_ids, c_mask, micro_tokens: int = MICRO_TOKENS,
                 loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Backward of the batch's mean answer-token cross-entropy; returns the loss (detached). Rows go
    through in micro-batches of at most ``micro_tokens`` tokens (:data:`MICRO_TOKENS`), each normalised by
    the whole batch's answer tokens, so the accumulated gradient is the batch's. ``loss_mask``: the tokens
    trained on (a transcript's policy parts; default every answer token); the forward attends to all of
    ``c_mask``."""
    lm = c_mask if loss_mask is None else loss_mask * c_mask
    rows = max(1, micro_tokens // (p_ids.shape[1] + c_ids.shape[1]))
    if rows >= p_ids.shape[0]:  # one micro-batch: the plain computation
        logp = token_logprobs(completion_logits(model, p_ids, p_mask, c_ids, c_mask), c_ids)
        loss = -(logp * lm).sum() / lm.sum()
        loss.backward()
        return loss.detach()
    total, loss = lm.sum(), torch.zeros(())
    for i in range(0, p_ids.shape[0], rows):
        s = slice(i, i + rows)
        logp = token_logprobs(completion_logits(model, p_ids[s], p_mask[s], c_ids[s], c_mask[s]), c_ids[s])
        part = -(logp * lm[s]).sum() / total
        part.backward()
        loss = loss + part.detach()
    return loss


def sft_key_fields(sft_cfg) -> dict:
    """The SFT settings that key the warm-start cache. Options that are off are left out, so warm
    starts cached before they existed keep their keys: the aggregation options while
    ``aggregation_ratio`` is 0, the stopping-rule options (and the rule's version) while
    ``target_accuracy`` is None (fixed ``steps``, the rule that was there before)."""
    sft = sft_cfg.model_dump(mode="json")
    sft.pop("max_minutes", None)  # the time bound shapes whether a warm start runs, not what it learns
    sft.pop("over_budget", None)
    if not sft.get("aggregation_ratio"):
        sft.pop("aggregation_ratio", None)
        sft.pop("aggregation_k", None)
    if sft.get("target_accuracy") is None:
        for name in ("target_accuracy", "eval_every", "val_problems", "target_metric"):
            sft.pop(name, None)
    else:
        sft["stop_rule"] = STOP_RULE
        if sft.get("target_metric") in UNKEYED_METRICS:
            sft.pop("target_metric", None)
    return sft


def warm_start_record(model_path) -> dict | None:
    """What the warm start at ``model_path`` reached (``warm_start.json`` beside the checkpoint:
    rule, steps taken, validation accuracy, checks, build environment), or None for a checkpoint
    that is not a warm start or was cached before records existed."""
    try:
        record = json.loads((Path(model_path) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _build_environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "machine": platform.machine(), "python": platform.python_version()}


def stop_rule(sft_cfg) -> str:
    """The ``sft`` section's stopping rule in words, for a status line."""
    target = sft_cfg.target_accuracy
    return (f"until validation {sft_cfg.target_metric} >= {target:g} (checked every {sft_cfg.eval_every} steps, "
            f"at most {sft_cfg.steps} steps)" if target is not None else f"{sft_cfg.steps} steps")


def budget_check(task, sft_cfg, problems: list, log=print, what: str = "warm start"):
    """The ``estimate`` hook of :func:`train_sft` for an ``sft`` section: logs the estimate, and over
    ``sft.max_minutes`` warns with what would make it cheaper, or raises :class:`WarmStartBudgetError`."""
    target = sft_cfg.target_accuracy
    eval_every = sft_cfg.eval_every if target is not None else 0

    def estimate(per_step_s: float, check_s: float) -> None:
        from rlvr.records.progress import format_duration

        seconds = duration_estimate(sft_cfg.steps, per_step_s, check_s, eval_every)
        checks = f", a validation check every {eval_every} steps at {check_s:.1f} s" if eval_every else ""
        log(f"{what}: about {format_duration(seconds)} ({'at most ' if target is not None else ''}"
            f"{sft_cfg.steps} steps at {per_step_s:.2f} s/step{checks})")
        bound = sft_cfg.max_minutes
        if bound is None or seconds <= bound * 60:
            return
        advice = budget_advice(task, sft_cfg, per_step_s, problems)
        span = "may take up to" if target is not None else "estimated at"  # a target may stop it before the cap
        over = f"{what} {span} {format_duration(seconds)}, over sft.max_minutes={bound:g}; cheaper: {advice}"
        if sft_cfg.over_budget == "stop":
            raise WarmStartBudgetError(f"{over} (stopped before the time was spent: sft.over_budget=stop)")
        log(f"warning: {over} (sft.over_budget=stop stops here instead)")
    return estimate


def train_by_rule(model, tokenizer, task, sft_cfg, progress: bool = True, log=print,
                  what: str = "warm start") -> tuple[SFTResult, list]:
    """:func:`train_sft` under the ``sft`` section's rule (a validation target, else fixed steps), seeded
    by ``sft.seed`` without touching the caller's RNG, with the time bound of :func:`budget_check`;
    returns the result and the validation problems."""
    target = sft_cfg.target_accuracy
    val, problems, validate = [], None, None
    if target is not None:
        val, problems = validation_split(task, sft_cfg.val_problems)
        metric = VALIDATION_METRICS[sft_cfg.target_metric]

        def validate() -> float:
            return metric(model, tokenizer, task, val)
    train = task.problems("train") if problems is None else problems
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sft_cfg.seed)
        result = train_sft(model, tokenizer, task, sft_cfg.steps, sft_cfg.lr, sft_cfg.batch_size,
                           sft_cfg.warmup_steps, seed=sft_cfg.seed, progress=progress,
                           aggregation_ratio=sft_cfg.aggregation_ratio, aggregation_k=sft_cfg.aggregation_k,
                           problems=problems, validate=validate,
                           eval_every=sft_cfg.eval_every if target is not None else 0, target_accuracy=target,
                           estimate=budget_check(task, sft_cfg, train, log, what))
    return result, val


class TranscriptTask:
    """A task whose warm-start targets are an environment's transcripts (``env.sft_transcript(problem, rng)``:
    ``[(text, trained), ...]``, the environment's parts not trained on); everything else is the task's."""

    def __init__(self, task, env):
        self.task, self.env = task, env
        self.rng = random.Random("rlvr.sft.transcripts")

    def sft_problem(self, problem):
        """The problem as the environment first shows it (its ``reset`` text as the prompt)."""
        from rlvr.tasks.base import Problem

        return Problem(prompt=self.env.reset(problem, seed=0), answer=problem.answer, meta=problem.meta)

    def format_sft_target(self, problem):
        return self.env.sft_transcript(problem, self.rng)

    def __getattr__(self, name):
        return getattr(self.task, name)


def warm_start(task, task_name: str, task_options: dict, sft_cfg, progress: bool = True,
               log=print, env=None) -> Path:
    """The cached warm-start checkpoint for this task and SFT config, built if missing. ``env``: ``(name,
    options, environment)``: an environment with ``sft_transcript`` warm-starts on its transcripts (keyed by
    its name and options too)."""
    key_fields = sft_key_fields(sft_cfg)
    if env is not None and hasattr(env[2], "sft_transcript"):
        if sft_cfg.target_accuracy is not None:
            raise ValueError(f"sft.target_accuracy with env.name={env[0]}: a warm start on the environment's "
                             "transcripts is validated by episodes, not yet built; set sft.target_accuracy=null "
                             "(fixed sft.steps)")
        key_fields = {**key_fields, "env": env[0], "env_options": env[1]}
        task = TranscriptTask(task, env[2])
    key = warm_start_key(task_name, task_options, key_fields, TINY_ARCH)
    path = cache_root() / "warmstart" / key
    if (path / "config.json").exists():
        log(f"warm start: using cached checkpoint {path}")
        record = warm_start_record(path)
        if record is not None and record.get("reached_target") is False:
            log(below_target_warning(record.get("target_metric") or "greedy_accuracy", record.get("val_accuracy"),
                                     record.get("target_accuracy")))
        return path
    log(f"warm start: supervised training of the built-in tiny model ({stop_rule(sft_cfg)}) -> {path}")
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=sft_cfg.seed)
    started = time.perf_counter()
    result, val = train_by_rule(model, tokenizer, task, sft_cfg, progress, log)
    target = sft_cfg.target_accuracy
    seconds, peak = time.perf_counter() - started, peak_memory_gib()
    record = {
        "key": key, "task": task_name, "task_options": task_options, "sft": key_fields,
        "rule": STOP_RULE if target is not None else "fixed-steps",
        "target_metric": sft_cfg.target_metric if target is not None else None,
        "steps": result.steps, "max_steps": sft_cfg.steps, "target_accuracy": target,
        "reached_target": result.reached_target, "val_accuracy": result.val_accuracy,
        "val_problems": len(val), "checks": result.checks,
        "final_loss": result.losses[-1] if result.losses else None,
        "seconds": round(seconds, 1), "peak_memory_gib": round(peak, 2), "built_with": _build_environment(),
    }
    from rlvr.records.progress import format_duration

    took = f"in {format_duration(seconds)}, peak memory {peak:.2f} GiB"
    if target is not None:
        how = ("reached the target" if result.reached_target else
               f"stopped at the cap (sft.steps={sft_cfg.steps}) below the target {target:g}:")
        log(f"warm start: {how} validation {sft_cfg.target_metric} {result.val_accuracy:.3f} after {result.steps} steps "
            f"({len(val)} validation problems), {took}")
        if not result.reached_target:
            log(below_target_warning(sft_cfg.target_metric, result.val_accuracy, target))
    else:
        log(f"warm start: {result.steps} steps {took}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def sft_model(model_path: str | Path, task, sft_cfg, to: str | Path, dtype: str = "float32",
              progress: bool = True, log=print) -> Path:
    """Supervised training of a user's model (``model.path``) on the task's reference completions,
    saved as a plain Hugging Face folder ``to`` (``rlvr sft --to DIR`` with ``model.path`` set).

    The same rule as the built-in model's warm start (``sft`` section: steps, lr, batch size, and the
    validation target when ``sft.target_accuracy`` is set), on the model's own tokenizer: prompts as
    the task renders them (its chat template), each target ending with the template's end of turn
    (:func:`completion_end_id`). Nothing is cached: the folder is the result; the user's tokenizer files
    are copied as they were. Written under a temporary name and renamed when complete.
    """
    from rlvr.models.load import load_model_and_tokenizer, save_tokenizer

    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ValueError(f"--to {to}: exists and is not an empty folder; choose a new one")
    model, tokenizer = load_model_and_tokenizer(model_path, dtype)
    end = tokenizer.convert_ids_to_tokens(completion_end_id(tokenizer, task))
    log(f"sft: supervised training of {model_path} ({stop_rule(sft_cfg)}; targets end with {end}) -> {to}")
    started = time.perf_counter()
    result, val = train_by_rule(model, tokenizer, task, sft_cfg, progress, log, what="sft")
    if result.val_accuracy is not None:
        log(f"sft: validation {sft_cfg.target_metric} {result.val_accuracy:.3f} after {result.steps} steps "
            f"({len(val)} validation problems)")
    from rlvr.utils import atomic_dir

    with atomic_dir(to) as tmp:  # to: absent or an empty folder (checked above)
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)  # the user's tokenizer files, as they were
        record = {"model": str(model_path), "steps": result.steps, "val_accuracy": result.val_accuracy,
                  "checks": result.checks, "sft": sft_cfg.model_dump(mode="json"),
                  "seconds": round(time.perf_counter() - started, 1), "built_with": _build_environment()}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return to


def resolve_model_path(config, task, progress: bool = True, log=print) -> str:
    """The checkpoint a run starts from: the cached warm start for ``builtin:tiny``, else ``model.path``."""
    if config.model.path != BUILTIN_TINY:
        return config.model.path
    if config.model.warm_start:
        env = None
        if config.env.name:  # an environment with transcripts of its own warm-starts on them (rlvr.envs)
            from rlvr.envs import make_env

            env = (config.env.name, dict(config.env.options),
                   make_env(config.env.name, {"task": task}, **config.env.options))
        return str(warm_start(task, config.task.name, config.task.options, config.sft, progress, log, env=env))
    path = cache_root() / "tiny-untrained"
    if not (path / "config.json").exists():
        save_tiny(path, seed=config.sft.seed)
    return str(path)
