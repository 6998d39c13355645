"""Running a study: every arm x seed as an ordinary rlvr run, in parallel, resumable.

    plan      which runs are finished (summary.md written), interrupted (resume from checkpoint), new
    warm start built once in this process (all arms normally share one cached warm start)
    run       a process pool (spawn) of ``workers`` processes, ``threads_per_run`` torch threads each,
              or Ray tasks with ``backend: ray``
    report    results.md / results.csv / plots from the finished runs (rlvr.compare.report)

No scheduler of our own: ``concurrent.futures.ProcessPoolExecutor`` or Ray decides what runs when.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlvr.compare.study import RunSpec, Study
from rlvr.config import ConfigError, load_config

#: Config fields that may differ between a stored run and the study without making it stale.
_IGNORED = {("run", "output_dir"), ("logging", "progress")}
#: Environment variables a worker (a Ray worker in particular) must see as the driver does.
_ENV_PREFIXES = ("RLVR_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


@dataclass
class Planned:
    run: RunSpec
    status: str  # "finished" | "resume" | "new"


@dataclass
class StudyOutcome:
    study_dir: Path
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(threads_per_run: int) -> int:
    """As many concurrent runs as fit the machine's CPUs, at least one."""
    return max(1, cpu_count() // max(1, threads_per_run))


def is_finished(run_dir: Path) -> bool:
    """A run is finished once its final evaluation and summary.md are written (the loop's last act)."""
    return (Path(run_dir) / "summary.md").exists()


def _comparable(d: dict) -> dict:
    return {sec: {k: v for k, v in vals.items() if (sec, k) not in _IGNORED} if isinstance(vals, dict) else vals
            for sec, vals in d.items()}


def plan(study: Study) -> list[Planned]:
    """The status of every run; raises ConfigError if a stored run was made with another config
    (the study file changed since), so stale numbers never mix with new ones."""
    out, stale = [], []
    for run in study.runs:
        d = run.run_dir
        if not d.exists():
            out.append(Planned(run, "new"))
            continue
        if not (d / "config.yaml").exists():
            stale.append(f"study error: {d} exists but has no config.yaml (not a run folder); remove it")
            continue
        try:
            stored = load_config(d / "config.yaml").to_dict()
        except ConfigError as err:
            stale.append(f"study error: {run.label}: {d}/config.yaml no longer loads ({str(err).splitlines()[0]}); "
                         "remove the folder to rerun it")
            continue
        if _comparable(stored) != _comparable(run.config.to_dict()):
            diff = _diff(_comparable(stored), _comparable(run.config.to_dict()))
            stale.append(f"study error: {run.label}: {d} was run with another config ({diff}); "
                         "remove the folder to rerun it, or restore the study file")
            continue
        out.append(Planned(run, "finished" if is_finished(d) else "resume"))
    if stale:
        raise ConfigError("\n".join(stale))
    return out


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _diff(va, vb, f"{prefix}{k}.")
            if sub:
                diffs.append(sub)
        elif va != vb:
            diffs.append(f"{prefix}{k}: {va!r} there, {vb!r} now")
    return "; ".join(diffs[:3])


def prepare_warm_starts(runs: list[RunSpec], log=print) -> None:
    """Build each distinct cached warm start once, here, before the workers start (otherwise every
    worker would build the same one at the same time)."""
    from rlvr.models.load import BUILTIN_TINY
    from rlvr.warmstart.sft import resolve_model_path
    from rlvr.tasks import make_task

    seen = set()
    for run in runs:
        c = run.config
        if c.model.path != BUILTIN_TINY:
            continue
        key = json.dumps([c.task.name, c.task.options, c.sft.model_dump(mode="json"), c.model.warm_start],
                         sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        task = make_task(c.task.name, **c.task.options)
        resolve_model_path(c, task, progress=sys.stderr.isatty() and not os.environ.get("CI"), log=log)


def _job(p: Planned, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    return {"label": p.run.label, "config": p.run.config.to_dict(), "run_dir": str(p.run.run_dir),
            "mode": p.status, "threads": threads, "cwd": os.getcwd(), "env": env}


def _init_worker(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_one(job: dict) -> dict:
    """Train one arm x seed (in a worker process or a Ray task); returns {label, seconds, error}."""
    os.environ.update(job["env"])
    if os.getcwd() != job["cwd"]:
        os.chdir(job["cwd"])
    _init_worker(job["threads"])
    import torch

    from rlvr.config import config_from_dict
    from rlvr.models.load import quiet_transformers
    from rlvr.train.loop import train

    quiet_transformers()
    run_dir = Path(job["run_dir"])
    t0, c0 = time.perf_counter(), time.process_time()
    error = None
    try:
        if job["mode"] == "resume":
            train(resume=run_dir, log=lambda *_: None)
        else:
            result = train(config_from_dict(job["config"]), log=lambda *_: None)
            if result is not None and Path(result.run_dir).resolve() != run_dir.resolve():
                raise RuntimeError(f"run went to {result.run_dir}, expected {run_dir}")
    except Exception as err:  # reported by the driver; the other runs go on
        import traceback

        error = f"{type(err).__name__}: {err}"
        if run_dir.exists():
            (run_dir / "error.txt").write_text(traceback.format_exc())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if run_dir.exists():
        record_wall_time(run_dir, seconds, job["mode"], torch.get_num_threads(), error is None, cpu)
    return {"label": job["label"], "seconds": seconds, "error": error}


def record_wall_time(run_dir: Path, seconds: float, mode: str, threads: int, ok: bool,
                     cpu_seconds: float | None = None) -> None:
    """``wall_time.json``: wall and CPU seconds of each attempt (a resumed run has several) and
    their sums. CPU seconds (all threads of the run's process) do not grow when other jobs share
    the machine, so they compare costs across arms better than wall time on a busy machine."""
    from rlvr.utils import atomic_write_text

    path = Path(run_dir) / "wall_time.json"
    data = json.loads(path.read_text()) if path.exists() else {"attempts": []}
    data["attempts"].append({"mode": mode, "seconds": round(seconds, 3), "threads": threads, "ok": ok,
                             "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 3)})
    data["wall_s"] = round(sum(a["seconds"] for a in data["attempts"]), 3)
    cpus = [a.get("cpu_seconds") for a in data["attempts"]]
    data["cpu_s"] = round(sum(cpus), 3) if all(c is not None for c in cpus) else None
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def run_study(study: Study, workers: int | None = None, backend: str | None = None,
              threads_per_run: int | None = None, log=print) -> StudyOutcome:
    """Train every unfinished run of ``study``; finished runs are skipped, interrupted ones resumed."""
    par = study.spec.parallel
    backend = backend or par.backend
    threads = threads_per_run or par.threads_per_run
    if workers is None:
        workers = default_workers(threads) if par.workers == "auto" else par.workers
    ray = import_ray() if backend == "ray" else None  # fail before any work, with the install hint
    plan(study)  # a stale run folder is an error before any folder is made or locked
    study.study_dir.mkdir(parents=True, exist_ok=True)
    with _study_lock(study.study_dir):
        planned = plan(study)
        todo = [p for p in planned if p.status != "finished"]
        outcome = StudyOutcome(study.study_dir, skipped=[p.run.label for p in planned if p.status == "finished"])
        if outcome.skipped:
            log(f"{len(outcome.skipped)} of {len(planned)} runs already finished (skipped)")
        if todo:
            _run_planned(study, todo, outcome, workers, backend, threads, log, ray)
        return outcome


@contextlib.contextmanager
def _study_lock(study_dir: Path):
    """One ``rlvr compare`` per study folder at a time (two would train the same runs)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(study_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise ConfigError(f"study error: another rlvr compare (pid {f.read().strip() or '?'}) is running on "
                              f"{study_dir}; wait for it or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_planned(study, todo, outcome, workers, backend, threads, log, ray) -> None:
    from tqdm.auto import tqdm

    resumes = sum(p.status == "resume" for p in todo)
    workers = max(1, min(workers, len(todo)))
    log(f"{len(todo)} runs to train ({resumes} resumed) on {workers} {backend} worker(s) x {threads} thread(s); "
        f"study folder {study.study_dir}")
    prepare_warm_starts([p.run for p in todo], log=log)

    jobs = [_job(p, threads) for p in todo]
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"study {study.name}", unit="run", disable=not _progress_enabled(),
               dynamic_ncols=True)
    say = bar.write if not bar.disable else log

    def done(res: dict) -> None:
        bar.update(1)
        n = len(outcome.trained) + len(outcome.failed) + 1
        if res["error"]:
            outcome.failed[res["label"]] = res["error"]
            say(f"FAILED {res['label']} after {res['seconds']:.0f}s: {res['error']} ({n}/{len(jobs)})")
        else:
            outcome.trained.append(res["label"])
            say(f"done {res['label']} in {res['seconds']:.0f}s ({n}/{len(jobs)})")

    try:
        if backend == "ray":
            _run_ray(ray, jobs, threads, done)
        else:
            _run_local(jobs, workers, threads, done)
    finally:
        bar.close()
    outcome.wall_s = time.perf_counter() - t0


def _run_local(jobs: list[dict], workers: int, threads: int, done) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if workers == 1:  # no pool: easier to debug, same code path inside the run
        _init_worker(threads)
        for job in jobs:
            done(run_one(job))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        pending = {pool.submit(run_one, job): job for job in jobs}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = pending.pop(fut)
                    try:
                        done(fut.result())
                    except Exception as err:  # the worker process died (e.g. out of memory)
                        done({"label": job["label"], "seconds": 0.0, "error": f"worker died: {err!r}"})
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray, an optional extra: pip install 'rlvr[ray]' "
                          "(or use --backend local)") from None
    return ray


def _run_ray(ray, jobs: list[dict], threads: int, done) -> None:
    """One Ray task per run (``num_cpus = threads_per_run``); Ray places them on the cluster."""
    ray.init(ignore_reinit_error=True)
    remote = ray.remote(num_cpus=threads)(run_one)
    refs = {remote.remote(job): job for job in jobs}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                job = refs.pop(ref)
                try:
                    done(ray.get(ref))
                except Exception as err:  # the task's process died
                    done({"label": job["label"], "seconds": 0.0, "error": f"ray task failed: {err!r}"})
    except BaseException:
        for ref in refs:
            ray.cancel(ref)
        raise
