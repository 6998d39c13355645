"""Learned reward models: a scalar head on any causal LM checkpoint, trained on preference pairs.

A reward model (RM) is ``AutoModelForSequenceClassification`` with one label, made from a causal LM
checkpoint (the head is new; the body is the checkpoint's), as TRL's ``RewardTrainer`` and OpenRLHF do.
Its score of a (prompt, completion) is the head's output at the **last token of the text** (found from the
attention mask with right padding, so padding never shifts positions and a pad id that equals the eos id
cannot move the read-out, unlike a read-out that searches for the pad id).

* :func:`load_reward_model` builds or loads one; :func:`rm_scores` scores batches.
* :func:`train_reward_model` trains it with the Bradley-Terry loss
  (:func:`rlvr.algorithms.bradley_terry_loss`) on ``{prompt, chosen, rejected[, margin]}`` pairs and
  records held-out pair accuracy and the score calibration (mean, std) in ``rlvr_rm.json``.
* :class:`RewardModel` is the ``reward_model`` reward component (:mod:`rlvr.rewards.components`)::

      reward:
        components: [{type: reward_model, name: rm, path: runs/rm/model, normalize: calibrated}]

Text. With the RM tokenizer's chat template (``chat_template``: None = when it has one) a sample is the
messages ``[user: question, assistant: completion]`` rendered by that template (the question is
``problem.meta["question"]`` when the task keeps it, else the prompt text: :func:`rlvr.rewards.components.question_of`,
the user's turn before the policy's own template); without one it is ``prompt + completion``, the exact text the
policy saw and wrote. A text longer than ``max_length`` tokens is not cut (cutting can change what it says): it
scores NaN, a counted failure.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rlvr.algorithms import bradley_terry_loss, pair_accuracy
from rlvr.rewards.components import RewardComponentError, question_of, register_component

__all__ = ["RM_RECORD", "NORMALIZATIONS", "RewardModel", "load_reward_model", "rm_scores", "rm_text",
           "train_reward_model"]

#: Written beside a trained RM: training settings, held-out accuracy and score calibration.
RM_RECORD = "rlvr_rm.json"
NORMALIZATIONS = ("none", "batch", "calibrated")


def load_reward_model(path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """``(model, tokenizer)``: a one-label sequence-classification model from ``path`` (a causal LM
    checkpoint, whose new head is initialised by the model's own init, or a saved RM)."""
    from transformers import AutoModelForSequenceClassification

    from rlvr.models.load import load_tokenizer, quiet_transformers, set_runtime

    quiet_transformers()
    try:
        tokenizer = load_tokenizer(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1,
                                                                   dtype=getattr(torch, dtype))
    except OSError as err:
        raise RewardComponentError(f"reward model path {str(path)!r}: cannot load a checkpoint: {err}") from None
    if tokenizer.pad_token_id is None:
        set_runtime(tokenizer, pad_token=tokenizer.eos_token)
    set_runtime(tokenizer, padding_side="right")  # positions start at 0 on every row; read-out from the mask
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def rm_text(tokenizer, prompt: str, completion: str, question: str | None = None,
            chat_template: bool | None = None) -> str:
    """The text the RM scores (see the module docstring)."""
    use = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    if use:
        if not getattr(tokenizer, "chat_template", None):
            raise RewardComponentError("reward model chat_template=true, but its tokenizer has no chat template")
        messages = [{"role": "user", "content": question if question is not None else prompt},
                    {"role": "assistant", "content": completion}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return prompt + completion


def _read_out(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's scalar at each row's last real token ``[B]`` (rows right-padded)."""
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(-1).long() - 1
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return model.score(h).squeeze(-1).float()


def _encode(tokenizer, texts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    enc = tokenizer(list(texts), add_special_tokens=False, padding=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(-1).tolist()
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), lengths


@torch.no_grad()
def rm_scores(model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None) -> list[float]:
    """The RM's score of each text (NaN for an empty text or one longer than ``max_length`` tokens)."""
    device = next(model.parameters()).device
    limit = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    out = [math.nan] * len(texts)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    ok = [i for i, n in enumerate(lengths) if 0 < n <= limit]
    ok.sort(key=lambda i: lengths[i])  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ok), batch_size):
            idx = ok[start:start + batch_size]
            ids, mask, _ = _encode(tokenizer, [texts[i] for i in idx], device)
            for i, s in zip(idx, _read_out(model, ids, mask).tolist()):
                out[i] = s
    finally:
        model.train(was_training)
    return out


@register_component("reward_model")
class RewardModel:
    """The ``reward_model`` reward component: a trained scalar-head RM scores each completion.

    Args:
        name: the component's name (``reward/<name>`` in the metrics; a key for ``reward.weights``).
        path: the RM folder (from ``rlvr rm train``) or any sequence-classification checkpoint.
        device / dtype: where the RM runs (its own placement, e.g. ``cuda:1``), in which dtype.
        batch_size: texts per forward.
        normalize: ``none`` (raw score), ``batch`` (z-score within the scored batch) or ``calibrated``
            (``(s - mean) / std`` with the held-out statistics ``rlvr rm train`` recorded in ``rlvr_rm.json``).
        chat_template: render with the RM tokenizer's template (None: when it has one).
        max_length: longest text in tokens (None: the model's ``max_position_embeddings``); longer is NaN.
    """

    def __init__(self, name: str, path: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 32,
                 normalize: str = "none", chat_template: bool | None = None, max_length: int | None = None):
        if normalize not in NORMALIZATIONS:
            raise RewardComponentError(f"reward_model {name!r}: normalize = {normalize!r}; expected one of "
                                       f"{', '.join(NORMALIZATIONS)}")
        self.names = (str(name),)
        self.path, self.batch_size, self.normalize = str(path), int(batch_size), normalize
        self.chat_template, self.max_length = chat_template, max_length
        self.model, self.tokenizer = load_reward_model(path, device, dtype)
        self.model.eval()
        self.mean, self.std = 0.0, 1.0
        if normalize == "calibrated":
            record = Path(path) / RM_RECORD
            if not record.is_file():
                raise RewardComponentError(f"reward_model {name!r}: normalize=calibrated needs {record} (written by "
                                           "rlvr rm train); use normalize=none or batch for other checkpoints")
            cal = json.loads(record.read_text())["calibration"]
            self.mean, self.std = float(cal["mean"]), max(float(cal["std"]), 1e-6)

    def texts(self, problems: Sequence[Any], completions: Sequence[str]) -> list[str]:
        return [rm_text(self.tokenizer, p.prompt, c, question_of(p), self.chat_template)
                for p, c in zip(problems, completions)]

    def __call__(self, problems: Sequence[Any], texts: Sequence[str]) -> dict[str, list[float]]:
        scores = torch.tensor(rm_scores(self.model, self.tokenizer, self.texts(problems, texts), self.batch_size,
                                        self.max_length), dtype=torch.float64)
        if self.normalize == "calibrated":
            scores = (scores - self.mean) / self.std
        elif self.normalize == "batch":
            ok = torch.isfinite(scores)
            if int(ok.sum()) >= 2:
                mu, sd = scores[ok].mean(), scores[ok].std()
                scores = (scores - mu) / (sd + 1e-6)
        return {self.names[0]: scores.tolist()}


# ------------------------------------------------------------------------------------------------ training

@dataclass(frozen=True)
class Pair:
    """One preference pair: the prompt, the preferred and the other completion, an optional margin."""

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    question: str | None = None


def pairs_from_rows(rows: Sequence[dict], margin_field: str | None = None) -> list[Pair]:
    """Pairs from ``{prompt, chosen, rejected[, margin_field][, question]}`` rows (strings), with errors
    naming the row and the field."""
    out = []
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str):
                raise RewardComponentError(f"preference row {i}: field {key!r} must be a string, got "
                                           f"{type(row.get(key)).__name__} (rows need prompt, chosen, rejected)")
        margin = 0.0
        if margin_field:
            if not isinstance(row.get(margin_field), (int, float)):
                raise RewardComponentError(f"preference row {i}: margin field {margin_field!r} must be a number")
            margin = float(row[margin_field])
        out.append(Pair(row["prompt"], row["chosen"], row["rejected"], margin, row.get("question")))
    if not out:
        raise RewardComponentError("no preference pairs to train on")
    return out


def train_reward_model(model, tokenizer, train: Sequence[Pair], held_out: Sequence[Pair], *, epochs: int = 1,
                       lr: float = 1e-4, batch_size: int = 16, weight_decay: float = 0.0, seed: int = 0,
                       chat_template: bool | None = None, use_margin: bool = False,
                       log: Callable[[str], None] = print) -> dict:
    """Bradley-Terry training of ``model`` (in place) on ``train``; returns the record (held-out pair accuracy
    and loss before and after, score calibration on the held-out completions, steps, seconds)."""
    device = next(model.parameters()).device
    rng = random.Random(seed)
    torch.manual_seed(seed)

    def texts(pairs):
        return ([rm_text(tokenizer, p.prompt, p.chosen, p.question, chat_template) for p in pairs],
                [rm_text(tokenizer, p.prompt, p.rejected, p.question, chat_template) for p in pairs])

    def evaluate() -> tuple[float, float, list[float]]:
        if not held_out:
            return math.nan, math.nan, []
        c_txt, r_txt = texts(held_out)
        c = torch.tensor(rm_scores(model, tokenizer, c_txt, batch_size * 2))
        r = torch.tensor(rm_scores(model, tokenizer, r_txt, batch_size * 2))
        m = torch.tensor([p.margin for p in held_out]) if use_margin else None
        return pair_accuracy(c, r), float(bradley_terry_loss(c, r, m)), c.tolist() + r.tolist()

    acc0, loss0, _ = evaluate()
    log(f"rm: {len(train)} training pairs, {len(held_out)} held out; held-out accuracy {acc0:.3f} before")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()
    order = list(range(len(train)))
    steps, started = 0, time.perf_counter()
    for epoch in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [train[i] for i in order[start:start + batch_size]]
            c_txt, r_txt = texts(batch)
            ids, mask, _ = _encode(tokenizer, c_txt + r_txt, device)
            scores = _read_out(model, ids, mask)
            n = len(batch)
            margin = torch.tensor([p.margin for p in batch], device=device) if use_margin else None
            loss = bradley_terry_loss(scores[:n], scores[n:], margin)
            if not torch.isfinite(loss):
                raise RewardComponentError(f"rm train: non-finite loss at step {steps}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        acc, loss_eval, _ = evaluate()
        log(f"rm: epoch {epoch + 1}/{epochs}: held-out accuracy {acc:.3f}, loss {loss_eval:.4f}")
    model.eval()
    acc1, loss1, scores = evaluate()
    finite = [s for s in scores if math.isfinite(s)]
    mean = sum(finite) / len(finite) if finite else 0.0
    std = (sum((s - mean) ** 2 for s in finite) / max(len(finite) - 1, 1)) ** 0.5 if finite else 1.0
    return {"train_pairs": len(train), "held_out_pairs": len(held_out), "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "steps": steps, "seconds": round(time.perf_counter() - started, 1),
            "held_out_accuracy_before": acc0, "held_out_accuracy": acc1, "held_out_loss_before": loss0,
            "held_out_loss": loss1, "calibration": {"mean": mean, "std": std if std > 0 else 1.0}}


def save_reward_model(model, tokenizer, record: dict, to: str | Path) -> Path:
    """Write the RM (weights, tokenizer files as loaded, ``rlvr_rm.json``) to ``to`` atomically (an existing
    folder is replaced only once the new one is complete)."""
    from rlvr.models.load import save_tokenizer
    from rlvr.utils import atomic_dir

    with atomic_dir(Path(to), replace=True) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        (tmp / RM_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return Path(to)
