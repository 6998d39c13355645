"""The RL training loop, top to bottom; the same in every runtime mode.

    task, model, learner, producer, experience source   (set up, or restored on resume)
    evaluate before training
    for each step:
        experience = source.next_batch(policy_version)   # rollouts scored by the verifier
        metrics    = learner.update(experience)          # advantages, loss, optimizer steps
        source.publish_weights(model, ...)               # the samplers now run the new policy
        callbacks: log metrics, samples, periodic eval, checkpoint
    evaluate after training, plot, print the before/after table

The source decides how batches are made (``runtime`` section): in place, by an engine sharing
the learner's weights (sync, :class:`OnPolicyQueue`), or by rollout workers running beside the
learner with their own weights, in threads or Ray actors, at most ``runtime.max_staleness``
policy versions behind (:class:`rlvr.experience.async_source.AsyncSource`).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr import threads
from rlvr.config import Config, dump_config, load_config
from rlvr.control.callbacks import build_callbacks
from rlvr.eval.evaluate import evaluate
from rlvr.experience.sources import make_source
from rlvr.experience.workers import thread_split
from rlvr.experience.batch import Experience, PromptSampler
from rlvr.experience.producer import build_producer
from rlvr.experience.staleness import RolloutTimeout, RolloutWorkerError
from rlvr.extras import require_extras
from rlvr.models.load import BUILTIN_TINY, build_on_meta, load_model_and_tokenizer
from rlvr.rollout.episodes import Episodes
from rlvr.records.checkpoint import latest_checkpoint, load_trainer_state, remove_leftovers, save_checkpoint
from rlvr.records.logger import RunLogger
from rlvr.records.progress import StepProgress
from rlvr.records.trackers import open_trackers
from rlvr.rollout.factory import generation_config_note, make_engine
from rlvr.tasks import defaults as task_defaults, make_task
from rlvr.parallel import DataParallel
from rlvr.parallel.data_parallel import load_sharded
from rlvr.train.group import SHARDS, GroupLearner, follow, resume_shards
from rlvr.train.learner import Learner, NonFiniteStepsError
from rlvr.utils import atomic_write_text, deterministic_algorithms, seed_everything, storage_guard, write_run_meta
from rlvr.warmstart.sft import resolve_model_path


@dataclass
class RunResult:
    run_dir: Path
    before: dict
    after: dict
    steps: int


def new_run_dir(config: Config) -> Path:
    """``runs/<name>``; if taken, ``runs/<name>-1``, ``-2``... (a finished run is never overwritten)."""
    base = Path(config.run.output_dir) / config.run.name
    path, i = base, 0
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def progress_enabled(config: Config) -> bool:
    """Whether a live progress bar draws (``logging.progress``, a terminal on stderr, not under CI)."""
    return config.logging.progress and sys.stderr.isatty() and not os.environ.get("CI")


def train(config: Config | None = None, resume: str | Path | None = None, log=print,
          stop_after: int | None = None) -> RunResult | None:
    """Train from ``config`` into a new run folder, or continue the run folder ``resume``.

    ``stop_after=k`` stops after global step ``k`` as an interruption would (after that step's
    checkpoint, if one falls due); the run is then continued with ``resume``.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise ValueError(f"--resume {run_dir}: no config.yaml there; give a run folder under runs/")
        config = load_config(run_dir / "config.yaml")
    else:
        run_dir = new_run_dir(config)
    threads.apply_threads(config.run.threads)  # None: torch's default (rlvr.threads: why and what was measured)
    if threads.NOTE:
        log(threads.NOTE)
    require_extras(config)  # a missing extra (tracker, peft, vllm) fails here, before anything is built
    group = None
    if config.trainer.dist.engine != "none":  # a learner group (rlvr.parallel): rank 0 drives, the others follow
        d = config.trainer.dist
        group = DataParallel.init(d.engine, d.timeout_s, config.run.device, d.mixed_precision)
    seed_everything(config.run.seed)
    try:
        with deterministic_algorithms(config.run.deterministic):  # + batch-invariant sampling (SamplingParams)
            if group is not None and not group.driver:
                return _follow(group)
            return _train(config, run_dir, resume, log, stop_after, group)
    finally:
        if group is not None:
            group.close()


def _models(config: Config, model_path: str, log, meta: bool = False):
    """The policy, its tokenizer, the critics and the distillation teacher, as the config asks; ``meta``: the
    policy built on the meta device, no weights and no tokenizer (a learner group's ranks 1..N-1)."""
    if meta:
        model, tokenizer = build_on_meta(model_path, config.model.dtype), None
    else:
        model, tokenizer = load_model_and_tokenizer(model_path, config.model.dtype, config.run.device)
    if config.model.lora.enabled:  # only the adapter trains; the reference is the base (rlvr.models.lora)
        from rlvr.models.lora import apply_lora

        model = apply_lora(model, config.model.lora, base_path=model_path)
    teacher = None
    if config.distill.teacher:  # on-policy distillation: a frozen teacher with the student's tokenizer
        from rlvr.models.load import load_teacher

        teacher = load_teacher(config.distill.teacher, tokenizer, config.distill.dtype, config.run.device)
        log(f"distill: teacher {config.distill.teacher} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M "
            f"parameters), beta {config.distill.coef}, {config.distill.placement}, task weight "
            f"{config.distill.task_weight}")
    return model, tokenizer, teacher


def _critics(config: Config, model_path: str, log, group: DataParallel | None = None):
    """The critics the estimator needs (PPO, AsyPPO), or None; in a learner group, sharded (a collective)."""
    if not config.uses_critic():
        return None
    from rlvr.train.critic import Critics

    critics = Critics.build(config, model_path, dist=group)
    log(f"critic: {config.critic.num_critics} x {critics.num_parameters() / 1e6:.2f}M parameters, "
        f"value loss {config.critic.value_loss}")
    if config.algorithm.advantage_estimator == "asyppo" and config.critic.num_critics == 1:
        log("note: critic.num_critics = 1, so AsyPPO's disagreement masks are disabled (they need "
            "M >= 2 critics); this run is PPO with GAE")
    return critics


def _follow(group: DataParallel) -> None:
    """Ranks 1..N-1 of a learner group: the same learner as rank 0's (its config, model, critics, teacher;
    resumed from its checkpoint), then do what rank 0 says (:func:`rlvr.train.group.follow`)."""
    config, model_path = group.broadcast()
    model, _, teacher = _models(config, model_path, log=lambda *a: None, meta=config.trainer.dist.meta_init)
    critics = _critics(config, model_path, lambda *a: None, group)
    learner = Learner(model, config, critics, teacher=teacher, dist=group)  # rank 0's weights into the shards
    ckpt = group.broadcast()
    if ckpt is not None:  # this rank's shards of the checkpoint (or rank 0's resumed weights)
        resume_shards(learner, group, ckpt)
    follow(learner, group)


def _train(config: Config, run_dir: Path, resume, log, stop_after: int | None,
           group: DataParallel | None = None) -> RunResult | None:
    """The run itself (see :func:`train`); in a learner group, rank 0's part."""
    task = make_task(config.task.name, **config.task.options)

    # --- components
    model_path = resolve_model_path(config, task, config.logging.progress, log)  # status lines when not a tty
    model, tokenizer, teacher = _models(config, model_path, log)
    task_defaults.apply_token_budget(config, task, tokenizer, log)  # before anything reads max_new_tokens
    policy = model  # what the rollout engine samples from, checkpoints save and weight sync publishes
    if group is not None:
        group.broadcast((config, model_path))  # the other ranks build the same learner (_follow)
    critics = _critics(config, model_path, log, group)
    if group is not None:  # the learner's model is sharded: the engine samples from an unsharded copy
        policy = copy.deepcopy(model)
        learner = GroupLearner(Learner(model, config, critics, teacher=teacher, dist=group), group, policy)
        log(f"learner: {group.world_size} rank(s), {group.engine} on {config.run.device} (rank 0 drives)")
    else:
        learner = Learner(model, config, critics, teacher=teacher)
    callbacks = build_callbacks(config)  # controllers, reference resets, diagnostics (rlvr.control.callbacks)
    r = config.rollout
    engine = make_engine(config, policy, tokenizer, model_path)  # hf shares the learner's weights; vllm pulls them
    if note := generation_config_note(config, policy):  # what of the model's generation_config the engine ignores
        log(note)
    sampler = PromptSampler(task.problems("train"), config.run.seed)
    source = make_source(config, build_producer(config, engine, task, model_path), policy, tokenizer, task, sampler,
                         model_path=model_path)
    if config.runtime.decoupled():
        learner_threads, worker_threads = thread_split(config.runtime, config.run.threads)
        torch.set_num_threads(learner_threads)
        log(f"runtime: {config.runtime.mode}, {config.runtime.num_rollout_workers} {config.runtime.backend} "
            f"rollout worker(s) x {worker_threads} thread(s), learner {learner_threads} thread(s), "
            f"max staleness {config.runtime.staleness()}, {config.runtime.weight_sync} weight sync "
            f"({config.rollout_dtype()} engine copy)")
    logger = RunLogger(run_dir)
    eval_problems = task.problems("eval", config.eval.num_problems)
    episodes = Episodes.from_config(config)  # multi-turn: evaluation runs episodes too

    def run_eval(step: int) -> dict:
        result = evaluate(engine, task, eval_problems, r.temperature, r.top_p, r.max_new_tokens,
                          config.eval.samples_per_problem, seed=config.run.seed + 1234, episodes=episodes)
        logger.log({"step": step, **{f"eval/{k}": v for k, v in result.items()}})
        return result

    # --- start or resume
    start = 0
    if resume is not None:
        remove_leftovers(run_dir)  # of a run killed while writing or deleting a checkpoint
    ckpt = latest_checkpoint(run_dir) if resume is not None else None
    if ckpt is not None:
        if config.model.lora.enabled:  # the checkpoint holds the adapter
            from rlvr.models.lora import load_adapter_checkpoint

            load_adapter_checkpoint(policy, ckpt)
        else:
            restored, _ = load_model_and_tokenizer(ckpt, config.model.dtype, config.run.device)
            policy.load_state_dict(restored.state_dict())
    if group is not None:  # every rank's shards of the checkpoint (model and optimizer), or rank 0's weights
        group.broadcast(None if ckpt is None else str(ckpt))
        if ckpt is not None:
            learner.resume_shards(ckpt)
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        learner.load_state_dict(state["learner"])
        if group is None and "optimizer" not in state["learner"]:  # a learner group's checkpoint, in one process
            load_sharded(learner.sharded_parts(), ckpt / SHARDS)
        callbacks.load_state_dict(state.get("callbacks", {}))
        if critics is not None and group is None:  # (a group's came back with its shards)
            critics.load_pretrained(ckpt)
        start = state["step"]
        source.load_state_dict(state["source"], start) if config.runtime.decoupled() else \
            source.load_state_dict(state["source"])
        engine.update_weights(None, learner.policy_version)
        logger.truncate_after(start)
        log(f"resumed {run_dir} from {ckpt.name} (step {start} of {config.trainer.steps})")
    else:
        with storage_guard(run_dir, "create the run folder"):
            run_dir.mkdir(parents=True, exist_ok=True)
        logger.truncate_after(-1)  # a resume before the first checkpoint starts over: no record kept
        dump_config(config, run_dir / "config.yaml")
        log(f"run folder: {run_dir}" + (" (no checkpoint yet: starting over)" if resume is not None else ""))
    write_run_meta(run_dir, resumed=resume is not None)  # git commit, versions
    logger.trackers = open_trackers(config, run_dir)  # logging.report_to: the same records as metrics.jsonl
    before = _first_eval(logger) if start > 0 else run_eval(0)
    if start == 0:
        log(task_defaults.start_report(before, len(eval_problems), model_path))

    def save_extra(folder: Path) -> None:  # beside the HF export: critics, a learner group's shards
        if group is not None:  # every rank writes its shards; the critics' exports are gathered
            learner.save_checkpoint(folder)
        elif critics is not None:
            critics.save_pretrained(folder)

    def checkpoint(step: int) -> None:
        save_checkpoint(run_dir, step, policy, tokenizer,
                        {"learner": learner.state_dict(), "source": source.state_dict(),
                         "callbacks": callbacks.state_dict()},
                        keep=config.logging.keep_checkpoints, save_extra=save_extra)

    # --- the loop
    bar = StepProgress(total=config.trainer.steps, initial=start, desc="RL", enabled=config.logging.progress)
    sync = source.publish_weights(policy, learner.policy_version, start)  # the workers' first weights
    callbacks.on_train_begin(learner)
    done = start
    truncated, warned_truncation = [], False  # truncated_frac of recent steps (truncation_warning)
    try:
        for step in range(start, config.trainer.steps):
            t0 = time.perf_counter()
            experience = source.next_batch(learner.policy_version)
            waited = time.perf_counter() - t0
            staleness = learner.policy_version - experience.policy_version
            if step == start and (flat := task_defaults.zero_variance_warning(experience.rewards, experience.group,
                                                                              builtin=config.model.path == BUILTIN_TINY)):
                task_defaults.warn(flat)
            metrics = learner.update(experience, step)
            if group is not None:  # the shards gathered into the engine's copy
                metrics.update(learner.publish())
            metrics.update(callbacks.on_step_end(step, learner, experience, metrics))
            next_sync = source.publish_weights(policy, learner.policy_version, step + 1)

            record = {"step": step + 1, "policy_version": learner.policy_version, "staleness": staleness,
                      **rollout_metrics(experience), **metrics, **runtime_metrics(experience, waited, t0, sync)}
            sync = next_sync
            truncated.append(record["truncated_frac"])
            if not warned_truncation and (cut := truncation_warning(truncated, r.max_new_tokens, done + 1)):
                task_defaults.warn(cut)
                warned_truncation = True
            logger.log(record)
            bar.update(step + 1, record)
            done = step + 1
            if config.logging.num_samples and (done % config.logging.samples_every == 0 or done == 1):
                logger.log_samples(done, sample_rows(experience, config.logging.num_samples))
            if _warn_skipped(learner, config, done, record, log):  # too many non-finite steps in a row
                bar.close()
                if done < config.trainer.steps:
                    checkpoint(done)  # skipped steps left the weights as the last finite update made them
                logger.close()
                raise NonFiniteStepsError(_nonfinite_message(learner, config, done, run_dir,
                                                             wrote=done < config.trainer.steps))
            if config.eval.every and done % config.eval.every == 0 and done < config.trainer.steps:
                run_eval(done)
            if done % config.logging.checkpoint_every == 0 and done < config.trainer.steps:
                checkpoint(done)
                if config.logging.plots:
                    logger.plot()
            if stop_after is not None and done >= stop_after and done < config.trainer.steps:
                bar.close()
                log(f"stopped after step {done}; continue with: rlvr train --resume {run_dir}")
                logger.close()
                return None
    except (RolloutWorkerError, RolloutTimeout) as err:
        bar.close()
        if done > start:
            checkpoint(done)
        log(f"stopped at step {done}: {err}; continue with: rlvr train --resume {run_dir}")
        raise
    finally:
        source.close()
        if group is not None and done < config.trainer.steps:  # stopped early (or failed): the other ranks stop
            learner.close()
    bar.close()

    steps = config.trainer.steps
    if latest_checkpoint(run_dir) is None or latest_checkpoint(run_dir).name != f"step_{steps:06d}":
        after = run_eval(steps)
        checkpoint(steps)
    else:
        after = _last_eval(logger)
    if config.logging.plots:
        logger.plot()
    if group is not None:
        learner.close()
    table = summary_table(before, after, len(eval_problems), r.temperature, config.eval.samples_per_problem)
    atomic_write_text(run_dir / "summary.md", table + "\n")
    log(table)
    logger.close()
    return RunResult(run_dir=run_dir, before=before, after=after, steps=steps)


#: truncation_warning: the steps it looks back over (at least the first), and the mean share of
#: truncated completions over them that it warns at
TRUNCATION_WINDOW, TRUNCATION_MIN_STEPS, TRUNCATION_SHARE = 5, 2, 0.5


def truncation_warning(fractions: list[float], budget: int, step: int) -> str | None:
    """A one-line warning when most completions of the last :data:`TRUNCATION_WINDOW` steps (at least
    :data:`TRUNCATION_MIN_STEPS`) hit the
    token budget (finish reason ``length``): they were cut before their stop token, so the verifier
    scores unfinished text and the loss trains on it. None otherwise."""
    recent = fractions[-TRUNCATION_WINDOW:]
    if len(recent) < TRUNCATION_MIN_STEPS:
        return None
    share = sum(recent) / len(recent)
    if share <= TRUNCATION_SHARE:
        return None
    return (f"step {step}: {100 * share:.0f}% of the completions of the last {len(recent)} step(s) hit "
            f"rollout.max_new_tokens={budget} before a stop token (finish reason 'length', truncated_frac in "
            "metrics.jsonl): the verifier scores cut-off text; raise rollout.max_new_tokens, or leave it unset "
            "to derive it from the task's answers")


def _warn_skipped(learner: Learner, config: Config, step: int, record: dict, log) -> bool:
    """A warning line for a step whose update skipped optimizer steps (NaN/inf loss or gradient
    norm); True when ``trainer.max_consecutive_skipped`` of them in a row stop the run."""
    if not learner.step_skipped:
        return False
    limit = config.trainer.max_consecutive_skipped
    nan = float("nan")
    log(f"warning: step {step}: {learner.step_skipped} optimizer step(s) skipped for a non-finite loss or "
        f"gradient norm (loss {record.get('loss', nan):.4g}, grad_norm {record.get('grad_norm', nan):.4g}); "
        f"{learner.consecutive_skipped} in a row, the run stops at {limit} (trainer.max_consecutive_skipped)")
    return learner.consecutive_skipped >= limit


def _nonfinite_message(learner: Learner, config: Config, step: int, run_dir: Path, wrote: bool) -> str:
    ckpt = latest_checkpoint(run_dir)
    where = ("no checkpoint was written" if ckpt is None
             else f"{ckpt} holds the weights and optimizer state of the last finite update" if wrote
             else f"the latest checkpoint is {ckpt}")
    return (f"stopped at step {step}: {learner.consecutive_skipped} optimizer steps in a row had a NaN/inf loss "
            f"or gradient norm and were skipped (trainer.max_consecutive_skipped="
            f"{config.trainer.max_consecutive_skipped}); {where}; see loss and grad_norm in "
            f"{run_dir / 'metrics.jsonl'} (a lower trainer.lr or a loss that cannot divide by zero may help)")


def runtime_metrics(exp: Experience, waited: float, t0: float, sync: dict) -> dict[str, float]:
    """Per step: staleness and the fate of stale samples, idle times, weight sync seconds and bytes.

    ``sync`` is the publication of the weights this batch's step started from."""
    rt = dict(exp.extras.get("runtime", {}))
    hist = rt.pop("staleness_hist", None)
    if hist is not None:
        for value in sorted(set(hist)):
            rt[f"staleness/{value}"] = hist.count(value)
    rt.setdefault("staleness_mean", 0.0)
    rt.setdefault("staleness_max", 0)
    rt["learner_wait_s"] = waited
    rt["time_step"] = time.perf_counter() - t0
    rt["learner_idle_frac"] = waited / rt["time_step"] if rt["time_step"] > 0 else 0.0
    return {**rt, **sync}


def rollout_metrics(exp: Experience) -> dict[str, float]:
    mask = exp.rollout.completion_mask.float()
    t_gen = exp.timings.get("generate", 0.0)
    out = {
        "reward_mean": float(exp.rewards.mean()),
        "reward_std": float(exp.rewards.std()) if exp.rewards.numel() > 1 else 0.0,
        "accuracy": float(exp.reward_components["correct"].mean()),
        "response_length": float(mask.sum(-1).mean()),
        "truncated_frac": sum(f == "length" for f in exp.rollout.finish_reason) / len(exp.rollout.finish_reason),
        "time_generate": t_gen,
        "time_score": exp.timings.get("score", 0.0),
        "generated_tokens": exp.rollout.num_generated_tokens,
        "tokens_per_second": exp.rollout.num_generated_tokens / t_gen if t_gen > 0 else 0.0,
    }
    if "gen_rounds" in exp.extras:
        out["gen_rounds"] = exp.extras["gen_rounds"]
    r = exp.rollout
    if "turns" in r.extras:  # multi-turn episodes (env config section)
        n = len(r.finish_reason)
        out["env/turns"] = sum(r.extras["turns"]) / n
        out["env/observation_tokens"] = sum(r.extras["observation_tokens"]) / n
        out["env/observations"] = sum(r.extras["observations"]) / n  # a tool environment: calls answered
        out["env/policy_tokens"] = float(r.loss_mask.float().sum(-1).mean())
        for reason in ("stop", "length", "max_turns", "timeout"):
            out[f"env/finish_{reason}"] = sum(f == reason for f in r.finish_reason) / n
        out["env/timeouts"] = float(sum(r.extras["timeouts"]))
    if "aggregation" in exp.extras:  # aggregation-aware RL: accuracy on aggregation vs plain prompts
        is_agg = exp.extras["aggregation"]
        correct = exp.reward_components["correct"]
        if is_agg.any():
            out["aggregation/accuracy"] = float(correct[is_agg].mean())
        if (~is_agg).any():
            out["aggregation/plain_accuracy"] = float(correct[~is_agg].mean())
    for name, values in exp.reward_components.items():
        if name not in ("reward", "correct"):
            out[f"reward/{name}"] = float(values.nanmean())  # NaN: a reward function returned None
    for key, seconds in exp.timings.items():  # each reward component's wall-clock (rlvr.rewards.components)
        if key.startswith("reward/"):
            out[f"time_{key}"] = seconds
    return out


def sample_rows(exp: Experience, n: int) -> list[dict]:
    rows, seen = [], set()
    for i, g in enumerate(exp.group.tolist()):
        if g in seen:
            continue
        seen.add(g)
        rows.append({"prompt": exp.problems[i].prompt, "answer": exp.problems[i].answer,
                     "completion": exp.rollout.texts[i], "finish_reason": exp.rollout.finish_reason[i],
                     "length": int(exp.rollout.completion_mask[i].sum()), "reward": float(exp.rewards[i])})
        if "transcript" in exp.rollout.extras:  # a multi-turn episode: [["policy", text], ["env", text], ...]
            rows[-1]["transcript"] = exp.rollout.extras["transcript"][i]
            rows[-1]["turn_rewards"] = exp.rollout.extras["turn_rewards"][i]
            rows[-1]["episode_prompt"] = exp.rollout.extras["prompt_text"][i]  # the environment's (e.g. with tools)
        if len(rows) == n:
            break
    return rows


def _first_eval(logger: RunLogger) -> dict:
    evals = [r for r in logger.records() if "eval/greedy_accuracy" in r]
    return {k.removeprefix("eval/"): v for k, v in evals[0].items() if k.startswith("eval/")} if evals else {}


def _last_eval(logger: RunLogger) -> dict:
    evals = [r for r in logger.records() if "eval/greedy_accuracy" in r]
    return {k.removeprefix("eval/"): v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {}


def summary_table(before: dict, after: dict, n: int, temperature: float, k: int) -> str:
    def pct(d, key):
        return f"{100 * d[key]:5.1f}%" if key in d else "    -"

    rows = [("greedy accuracy", "greedy_accuracy"),
            (f"sampled reward (T={temperature:g}, {k}/problem)", "sampled_reward")]
    width = max(len(r[0]) for r in rows)
    lines = [f"Held-out problems: {n}", f"{'':{width}}  before    after   change"]
    for label, key in rows:
        change = f"{100 * (after[key] - before[key]):+6.1f}" if key in before and key in after else ""
        lines.append(f"{label:{width}}  {pct(before, key)}   {pct(after, key)}   {change}")
    return "\n".join(lines)
