"""``rlvr rm``: reward models from preference pairs.

    rlvr rm pairs --config CFG --component short --out pairs.jsonl   # pairs labelled by a gold component
    rlvr rm train --config CFG --data pairs.jsonl --out runs/rm       # Bradley-Terry, held-out pair accuracy

``pairs`` samples ``--samples`` completions per train problem from the run's starting model (the cached warm
start for ``builtin:tiny``, else ``model.path``), scores them with the task's verifier, and writes every
(higher, lower) pair of a gold component within a prompt, at most ``--pairs-per-prompt``, as
``{prompt, chosen, rejected, margin}`` (margin: the gold difference). ``train`` starts the reward model from
the same checkpoint (or ``--init``), holds out ``--eval-fraction`` of the prompts (by a stable hash, so a prompt's
pairs stay on one side) or uses ``--eval-data``, and writes the model, its tokenizer and ``rlvr_rm.json``
(held-out accuracy before and after, calibration) to ``--out``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    r = sub.add_parser("rm", help="reward models: make preference pairs from a task's gold components, train "
                                  "a scalar-head reward model (Bradley-Terry)")
    rsub = r.add_subparsers(dest="rm_command", required=True)
    p = rsub.add_parser("pairs", help="preference pairs from the starting model's own samples, labelled by a "
                                      "gold reward component of the task")
    p.add_argument("--config", help="YAML config whose model, task, rollout and sft sections are used")
    p.add_argument("--component", required=True, help="the task's reward component that labels the pairs")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--prompts", type=int, default=256, help="train problems to sample (default 256)")
    p.add_argument("--samples", type=int, default=8, help="completions per problem (default 8)")
    p.add_argument("--pairs-per-prompt", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*")
    t = rsub.add_parser("train", help="train a reward model on {prompt, chosen, rejected} pairs")
    t.add_argument("--config", help="YAML config whose model section gives the starting checkpoint")
    t.add_argument("--data", required=True, help="pairs: .jsonl / .json / .csv / .parquet / a datasets folder")
    t.add_argument("--eval-data", help="held-out pairs (default: --eval-fraction of --data's prompts)")
    t.add_argument("--eval-fraction", type=float, default=0.1)
    t.add_argument("--out", required=True, help="the folder to write the reward model to")
    t.add_argument("--init", help="starting checkpoint (default: the config's starting model)")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--margin-field", help="a numeric field used as the Bradley-Terry margin (Llama 2)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("overrides", nargs="*")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _start(args):
    from rlvr.config import load_config
    from rlvr.tasks import make_task
    from rlvr.threads import apply_threads
    from rlvr.warmstart.sft import resolve_model_path

    config = load_config(args.config, args.overrides)
    apply_threads(config.run.threads)
    task = make_task(config.task.name, **config.task.options)
    return config, task, resolve_model_path(config, task, config.logging.progress, _log)


def run(args) -> int:
    return {"pairs": _pairs, "train": _train}[args.rm_command](args)


def _pairs(args) -> int:
    import torch

    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.rewards.components import question_of
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.factory import engine_on_module
    from rlvr.tasks.base import score
    from rlvr.utils import atomic_write_text

    config, task, path = _start(args)
    if args.component not in task.reward_names:
        raise ValueError(f"--component {args.component!r}: the task {config.task.name!r} gives "
                         f"{', '.join(task.reward_names)}")
    model, tok = load_model_and_tokenizer(path, "float32", config.run.device)
    engine = engine_on_module(config, model.eval(), tok)
    problems = task.problems("train", args.prompts)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, chunk = [], 32
    for start in range(0, len(problems), chunk):
        batch = problems[start:start + chunk]
        params = SamplingParams(temperature=args.temperature, max_new_tokens=config.rollout.max_new_tokens,
                                n=args.samples, seed=args.seed + start)
        with torch.no_grad():
            rollout = engine.generate([p.prompt for p in batch], params)
        rows_p = [batch[i] for i in rollout.prompt_index.tolist()]
        gold = score(task, rows_p, rollout.texts)[args.component].tolist()
        by_prompt: dict[int, list[int]] = {}
        for i, k in enumerate(rollout.prompt_index.tolist()):
            by_prompt.setdefault(k, []).append(i)
        for k, idx in by_prompt.items():
            distinct = {rollout.texts[i]: gold[i] for i in idx}  # each completion once
            cands = [(a, b) for a in distinct for b in distinct if distinct[a] > distinct[b]]
            rng.shuffle(cands)
            for a, b in cands[:args.pairs_per_prompt]:
                rows.append({"prompt": batch[k].prompt, "question": question_of(batch[k]), "chosen": a, "rejected": b,
                             "margin": distinct[a] - distinct[b]})
    if not rows:
        raise ValueError(f"rm pairs: no pairs: every completion of each prompt scored the same {args.component!r}; "
                         "sample more (--samples, --prompts, --temperature) or label by another component")
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows), where="--out")
    _log(f"rm pairs: {len(rows)} pairs labelled by {args.component!r} from {len(problems)} problems x "
         f"{args.samples} samples of {path}")
    print(out)
    return 0


def _train(args) -> int:
    import torch

    from rlvr.rewards.reward_model import load_reward_model, pairs_from_rows, save_reward_model, train_reward_model
    from rlvr.tasks.base import hash_fraction
    from rlvr.tasks.dataset import load_rows

    if not 0 <= args.eval_fraction < 1:
        raise ValueError(f"--eval-fraction {args.eval_fraction}: expected a share in [0, 1)")
    if args.init:
        from rlvr.config import load_config

        config, init = load_config(args.config, args.overrides), args.init
    else:
        config, _, init = _start(args)
    rows = load_rows(args.data)
    pairs = pairs_from_rows(rows, args.margin_field)
    if args.eval_data:
        held_out = pairs_from_rows(load_rows(args.eval_data), args.margin_field)
        train = pairs
    else:
        # salted: a task's own train/eval split is a hash of the prompt too, so unsalted every train prompt
        # would land on the same side
        side = {p.prompt: hash_fraction("rlvr-rm-held-out:" + p.prompt) < args.eval_fraction for p in pairs}
        held_out = [p for p in pairs if side[p.prompt]]
        train = [p for p in pairs if not side[p.prompt]]
        if args.eval_fraction > 0 and not held_out:
            raise ValueError(f"--data {args.data}: --eval-fraction {args.eval_fraction} held out no pairs (too few "
                             "prompts); raise it or give --eval-data")
    if not train:
        raise ValueError(f"--data {args.data}: no training pairs left after holding out {len(held_out)}")
    torch.manual_seed(args.seed)
    model, tok = load_reward_model(init, config.run.device)
    record = train_reward_model(model, tok, train, held_out, epochs=args.epochs, lr=args.lr,
                                batch_size=args.batch_size, seed=args.seed, use_margin=bool(args.margin_field),
                                log=_log)
    record.update(init=str(init), data=str(args.data))
    out = save_reward_model(model, tok, record, args.out)
    _log(f"rm: held-out pair accuracy {record['held_out_accuracy_before']:.3f} -> {record['held_out_accuracy']:.3f} "
         f"({record['held_out_pairs']} pairs); saved to {out}")
    print(out)
    return 0
