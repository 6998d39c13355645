"""Supervised warm start: teach the model the task's reference answers before RL.

``rlvr sft`` (and the first RL run of a config with ``model.warm_start: true``) trains the built-in
tiny model on ``prompt -> reference answer + EOS`` pairs, with the loss on the answer tokens only,
and caches the result as a Hugging Face checkpoint folder keyed by everything that shapes it.

With ``sft.aggregation_ratio > 0`` a share of each batch becomes RSA aggregation examples (arXiv
2509.26626): the task's aggregation prompt over 1..``sft.aggregation_k`` noisy candidates
(``task.sft_candidates``) with the reference completion as target, so that a tiny model can read
the aggregation format at test time (``rlvr tts``) and in aggregation-aware RL.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlvr.models.logprobs import completion_logits, token_logprobs
from rlvr.train.learner import make_optimizer


def cache_root() -> Path:
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


def warm_start_key(task_name: str, task_options: dict, sft: dict, arch: dict) -> str:
    import rlvr

    blob = json.dumps({"task": task_name, "options": task_options, "sft": sft, "arch": arch,
                       "version": rlvr.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_sft_batch(tokenizer, problems: list, targets: list[str]):
    """Left-padded prompts and right-padded targets (EOS appended), as the rollout engine lays them out."""
    enc = tokenizer([p.prompt for p in problems], return_tensors="pt", padding=True, padding_side="left")
    tgt = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    T = max(len(t) for t in tgt)
    ids = torch.full((len(tgt), T), tokenizer.pad_token_id)
    mask = torch.zeros((len(tgt), T), dtype=torch.long)
    for i, t in enumerate(tgt):
        ids[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = 1
    return enc["input_ids"], enc["attention_mask"], ids, mask


def sft_batch(task, batch: list, aggregation_ratio: float, aggregation_k: int,
              rng: random.Random) -> tuple[list, list[str]]:
    """Prompts (as Problems) and targets of one SFT batch; a share ``aggregation_ratio`` of the rows
    is turned into aggregation examples over ``1..aggregation_k`` noisy candidates."""
    from rlvr.tasks.base import Problem, aggregation_prompt

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


def train_sft(model, tokenizer, task, steps: int, lr: float, batch_size: int, warmup_steps: int,
              seed: int = 0, progress: bool = True, aggregation_ratio: float = 0.0,
              aggregation_k: int = 4) -> list[float]:
    """Cross-entropy on reference answers; returns the loss per step."""
    problems = task.problems("train")
    rng = random.Random(f"rlvr.sft.aggregation:{seed}")
    optimizer, scheduler = make_optimizer(model, lr, 0.0, (0.9, 0.98), warmup_steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="warm start (SFT)", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(len(problems), (batch_size,), generator=g).tolist()
        batch, targets = sft_batch(task, [problems[i] for i in idx], aggregation_ratio, aggregation_k, rng)
        p_ids, p_mask, c_ids, c_mask = encode_sft_batch(tokenizer, batch, targets)
        logp = token_logprobs(completion_logits(model, p_ids, p_mask, c_ids, c_mask), c_ids)
        loss = -(logp * c_mask).sum() / c_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def sft_key_fields(sft_cfg) -> dict:
    """The SFT settings that key the warm-start cache. The aggregation options are left out while
    they are off, so warm starts cached before they existed keep their keys."""
    sft = sft_cfg.model_dump(mode="json")
    if not sft.get("aggregation_ratio"):
        sft.pop("aggregation_ratio", None)
        sft.pop("aggregation_k", None)
    return sft


def warm_start(task, task_name: str, task_options: dict, sft_cfg, progress: bool = True,
               log=print) -> Path:
    """The cached warm-start checkpoint for this task and SFT config, built if missing."""
    from rlvr.models.tiny import TINY_ARCH, build_char_tokenizer, build_tiny_model

    key = warm_start_key(task_name, task_options, sft_key_fields(sft_cfg), TINY_ARCH)
    path = cache_root() / "warmstart" / key
    if (path / "config.json").exists():
        log(f"warm start: using cached checkpoint {path}")
        return path
    log(f"warm start: supervised training of the built-in tiny model ({sft_cfg.steps} steps) -> {path}")
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=sft_cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sft_cfg.seed)
        train_sft(model, tokenizer, task, sft_cfg.steps, sft_cfg.lr, sft_cfg.batch_size,
                  sft_cfg.warmup_steps, seed=sft_cfg.seed, progress=progress,
                  aggregation_ratio=sft_cfg.aggregation_ratio, aggregation_k=sft_cfg.aggregation_k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return path
