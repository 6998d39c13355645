"""Reward execution that never stalls a run: async reward functions, a daemon-thread pool, per-call
timeouts that become counted failures (NaN), and the ``functions`` reward component end to end."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from rlvr.rewards import RewardFunctionError, RewardFunctions, parse_reward_functions
from rlvr.rewards.components import RewardComponentError, RewardPipeline, build_component, check_component_spec
from rlvr.rewards.execution import RewardFunctionsComponent, problem_columns
from rlvr.rewards.pool import DaemonPool, RewardTimeoutError, gather_with_timeouts, run_coroutine, run_with_timeouts

#: A hung call waits on this (never set while the test runs); set at teardown so abandoned threads end.
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def _release_hung_threads():
    global RELEASE
    RELEASE = threading.Event()
    yield
    RELEASE.set()


def problems(n: int, rows: bool = True):
    return [SimpleNamespace(prompt=f"{i}+{i}=", answer=str(2 * i),
                            meta={"row": {"prompt": f"{i}+{i}=", "answer": str(2 * i), "level": i % 3}} if rows else {})
            for i in range(n)]


# --------------------------------------------------------------------------- reward functions under test


def length(completions, **kwargs):
    return [float(len(c)) for c in completions]


async def async_length(completions, **kwargs):
    await asyncio.sleep(0.01)
    return [float(len(c)) for c in completions]


def accuracy(completions, answer, **kwargs):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


async def async_accuracy(completions, answer, **kwargs):
    await asyncio.sleep(0)
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


def hangs_on_hang(completions, **kwargs):
    if "hang" in completions:
        RELEASE.wait(30)
    return [float(len(c)) for c in completions]


async def async_hangs_on_hang(completions, **kwargs):
    if "hang" in completions:
        await asyncio.sleep(30)
    return [float(len(c)) for c in completions]


def boom_on_x(completions, **kwargs):
    if "x" in completions:
        raise ValueError("cannot score 'x'")
    return [0.5] * len(completions)


def only_even(answer, **kwargs):
    return [None if int(a) % 4 else 1.0 for a in answer]


# --------------------------------------------------------------------------- async functions


@pytest.mark.parametrize("mode", ["batch", "per_sample"])
def test_async_function_gives_its_sync_twins_values(mode):
    ps, texts = problems(5), ["0", "22", "4", "nope", "8"]
    sync = RewardFunctionsComponent([length, accuracy], mode=mode)(ps, texts)
    both = RewardFunctionsComponent([async_length, async_accuracy], mode=mode)(ps, texts)
    assert both == {"async_length": sync["length"], "async_accuracy": sync["accuracy"]}
    assert sync["accuracy"] == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_async_function_in_reward_functions_and_inside_a_running_loop():
    fns = RewardFunctions(parse_reward_functions([async_accuracy]))
    columns = {"answer": ["2", "4"]}
    assert fns(["p", "q"], ["2", "5"], columns)[0] == {"async_accuracy": [1.0, 0.0]}

    async def caller():  # a caller that is itself inside an event loop (asyncio.run would refuse)
        return fns(["p", "q"], ["2", "4"], columns)[0]

    assert asyncio.run(caller()) == {"async_accuracy": [1.0, 1.0]}


def test_async_functions_through_the_dataset_task(tmp_path):
    from rlvr.tasks import DatasetTask

    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(10)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    user = tmp_path / "async_rewards.py"
    user.write_text(textwrap.dedent("""
        import asyncio
        async def acc(completions, answer, **kwargs):
            await asyncio.sleep(0)
            return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]
        def acc_sync(completions, answer, **kwargs):
            return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]
    """))
    outs = []
    for fn in ("acc", "acc_sync"):
        task = DatasetTask(path=str(data), eval_fraction=0.0, verifier="none", reward_functions=[f"{user}:{fn}"])
        ps = task.problems("train")[:3]
        outs.append([s[fn] for s in task.score_batch(ps, [ps[0].answer, "no", ps[2].answer])])
    assert outs[0] == outs[1] == [1.0, 0.0, 1.0]


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("fn", [hangs_on_hang, async_hangs_on_hang])
def test_a_hung_sample_is_nan_for_that_sample_only(fn):
    comp = RewardFunctionsComponent([fn], mode="per_sample", workers=4, timeout_s=0.3)
    t0 = time.perf_counter()
    out = comp(problems(4), ["a", "hang", "ccc", "dd"])[fn.__name__]
    elapsed = time.perf_counter() - t0
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2:] == [3.0, 2.0]
    assert 0.3 <= elapsed < 0.3 + 1.5
    assert comp.timeouts == {fn.__name__: 1} and comp.errors == {fn.__name__: 1}
    assert comp.seconds[fn.__name__] >= 0.3


@pytest.mark.parametrize("fn", [hangs_on_hang, async_hangs_on_hang])
def test_a_batch_that_times_out_fails_every_sample_once(fn):
    comp = RewardFunctionsComponent([fn], mode="batch", timeout_s=0.2)
    t0 = time.perf_counter()
    out = comp(problems(3), ["a", "hang", "ccc"])[fn.__name__]
    assert time.perf_counter() - t0 < 0.2 + 1.5  # no sample-by-sample retry after a timeout
    assert all(math.isnan(v) for v in out)
    assert comp.timeouts == {fn.__name__: 3}
    assert comp(problems(2), ["a", "bb"])[fn.__name__] == [1.0, 2.0]  # the next batch is scored


def test_pool_calls_overlap_and_respect_the_workers_bound():
    t0 = time.perf_counter()
    outcomes = run_with_timeouts([lambda: time.sleep(0.3) or 7] * 4, timeout_s=5, workers=4)
    assert time.perf_counter() - t0 < 0.9  # in parallel: one sleep, not four (1.2 s)
    assert [o.value for o in outcomes] == [7] * 4 and all(o.error is None for o in outcomes)

    lock, running, peak = threading.Lock(), [0], [0]

    def tracked(completions, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return [1.0]

    comp = RewardFunctionsComponent([tracked], mode="per_sample", workers=2, timeout_s=5)
    assert comp(problems(8), ["a"] * 8) == {"tracked": [1.0] * 8}
    assert peak[0] == 2


def test_async_per_sample_respects_the_workers_bound():
    running, peak = [0], [0]

    async def tracked(completions, **kwargs):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.05)
        running[0] -= 1
        return [1.0]

    t0 = time.perf_counter()
    assert RewardFunctionsComponent([tracked], mode="per_sample", workers=3)(problems(9), ["a"] * 9) == {
        "tracked": [1.0] * 9}
    assert peak[0] == 3 and time.perf_counter() - t0 < 0.45 * 2  # ~3 rounds of 0.05 s, not 9


def test_a_raising_sample_is_nan_in_both_modes():
    for mode in ("batch", "per_sample"):
        comp = RewardFunctionsComponent([boom_on_x], mode=mode, timeout_s=2)
        assert comp(problems(3), ["a", "x", "c"]) == {"boom_on_x": [0.5, pytest.approx(math.nan, nan_ok=True), 0.5]}
        assert comp.errors == {"boom_on_x": 1} and comp.timeouts == {"boom_on_x": 0}


def test_none_is_zero_not_a_failure_and_columns_come_from_the_row():
    comp = RewardFunctionsComponent([only_even])
    assert comp(problems(3), ["", "", ""]) == {"only_even": [1.0, 0.0, 1.0]}  # answers 0, 2, 4: 2 % 4 -> None
    prompts, columns = problem_columns(problems(2))
    assert prompts == ["0+0=", "1+1="] and columns == {"prompt": ["0+0=", "1+1="], "answer": ["0", "2"],
                                                       "level": [0, 1]}
    assert problem_columns(problems(2, rows=False))[1] == {"answer": ["0", "2"]}


def test_the_pool_replaces_abandoned_threads_and_warns_once_when_they_pile_up():
    warnings: list[str] = []
    pool = DaemonPool(workers=1, warn=warnings.append)
    outcomes = pool.run([lambda: RELEASE.wait(30)] * 6, timeout_s=0.05)
    assert all(isinstance(o.error, RewardTimeoutError) for o in outcomes)
    assert pool.abandoned == 6 and pool.stuck == 6
    assert len(warnings) == 1 and "Python cannot kill a thread" in warnings[0] and "rlvr.sandbox" in warnings[0]
    assert pool.run([lambda: 3], timeout_s=1)[0].value == 3  # capacity is kept: a fresh thread runs it
    RELEASE.set()
    deadline = time.monotonic() + 5
    while pool.stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.stuck == 0  # abandoned threads exit once their call returns


def test_a_coroutine_that_blocks_the_loop_times_out_and_the_loop_is_replaced():
    async def blocks():
        time.sleep(2.0)  # blocks the loop: its deadline cannot cancel it
        return 1

    async def fine():
        return 2

    t0 = time.perf_counter()
    with pytest.raises(RewardTimeoutError, match="event loop was blocked"):
        run_coroutine(blocks(), timeout_s=0.05)
    assert time.perf_counter() - t0 < 0.05 + 1.0 + 0.5
    assert run_coroutine(fine(), timeout_s=0.5) == 2  # on a new loop, even though the old one is still busy
    outs = gather_with_timeouts([fine, fine], timeout_s=0.5, workers=1)
    assert [o.value for o in outs] == [2, 2]


def test_a_hung_daemon_thread_does_not_block_interpreter_exit():
    script = textwrap.dedent("""
        import asyncio, threading
        from types import SimpleNamespace
        from rlvr.rewards.execution import RewardFunctionsComponent
        def hang(completions, **kwargs):
            threading.Event().wait(600)
        async def hang_in_a_thread(completions, **kwargs):  # asyncio.to_thread: the loop's default executor
            await asyncio.to_thread(threading.Event().wait, 600)
        comp = RewardFunctionsComponent([hang, hang_in_a_thread], mode="per_sample", timeout_s=0.2)
        print(comp([SimpleNamespace(prompt="p", answer="a", meta={})], ["c"]), flush=True)
        print("done", flush=True)
    """)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["{'hang':", "[nan],", "'hang_in_a_thread':", "[nan]}", "done"]
    assert time.perf_counter() - t0 < 30  # an import and 0.2 s, not the 600 s hang


# --------------------------------------------------------------------------- RewardFunctions (the dataset task's rule)


def test_reward_functions_default_runs_in_the_callers_thread():
    seen = []

    def where(completions, **kwargs):
        seen.append(threading.current_thread())
        return [1.0] * len(completions)

    assert RewardFunctions(parse_reward_functions([where]))(["p"], ["c"], {})[1] == [1.0]
    assert seen == [threading.current_thread()]


@pytest.mark.parametrize("mode", ["batch", "per_sample"])
def test_reward_functions_timeout_is_a_counted_zero_not_a_stop(mode):
    warnings: list[str] = []
    fns = RewardFunctions(parse_reward_functions([hangs_on_hang]), warn=warnings.append, timeout_s=0.2, mode=mode)
    comps, rewards, failures = fns(["p", "q"], ["hang", "hang"], {})  # every sample: still not a RewardFunctionError
    assert comps == {"hangs_on_hang": [0.0, 0.0]} and rewards == [0.0, 0.0] and failures == [1.0, 1.0]
    assert fns.errors == fns.timeouts == {"hangs_on_hang": 2}
    assert len(warnings) == (1 if mode == "batch" else 2) and "RewardTimeoutError" in warnings[0]
    assert fns(["p", "q"], ["a", "bb"], {})[1] == [1.0, 2.0]


def test_reward_functions_still_stop_on_a_function_that_always_raises():
    fns = RewardFunctions(parse_reward_functions([boom_on_x]), mode="per_sample", timeout_s=1)
    with pytest.raises(RewardFunctionError, match="failed on every sample of a batch of 2"):
        fns(["p", "q"], ["x", "x"], {})
    with pytest.raises(RewardFunctionError, match="mode 'sideways'"):
        RewardFunctions(parse_reward_functions([boom_on_x]), mode="sideways")
    with pytest.raises(RewardFunctionError, match="timeout_s must be a positive number"):
        RewardFunctions(parse_reward_functions([boom_on_x]), timeout_s=0)


# --------------------------------------------------------------------------- through the reward pipeline


def test_pipeline_zero_scores_a_failed_sample_0():
    comp = RewardFunctionsComponent([hangs_on_hang, boom_on_x], mode="per_sample", timeout_s=0.2)
    pipe = RewardPipeline(components=[comp], on_failure="zero")
    out, seconds = pipe(problems(4), ["a", "hang", "x", "dd"], group=[0, 0, 1, 1])
    assert out["hangs_on_hang"].tolist() == [1.0, 0.0, 1.0, 2.0]
    assert out["boom_on_x"].tolist() == [0.5, 0.5, 0.0, 0.5]
    assert out["reward_failures"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert pipe.failures == {"hangs_on_hang": 1, "boom_on_x": 1}
    assert seconds["hangs_on_hang/boom_on_x"] >= 0.2
    assert comp.seconds["hangs_on_hang"] >= 0.2 > comp.seconds["boom_on_x"]


def test_pipeline_drop_group_and_stop():
    comp = RewardFunctionsComponent([hangs_on_hang], mode="per_sample", timeout_s=0.2)
    out, _ = RewardPipeline(components=[comp], on_failure="drop_group")(problems(4), ["a", "b", "c", "hang"],
                                                                        group=[0, 0, 1, 1])
    assert out["reward_failed_group"].tolist() == [0.0, 0.0, 1.0, 1.0]

    pipe = RewardPipeline(components=[RewardFunctionsComponent([boom_on_x], mode="per_sample")], on_failure="stop",
                          max_failures=2)
    pipe(problems(2), ["x", "a"])
    pipe(problems(2), ["a", "x"])  # 2 failures: still tolerated
    with pytest.raises(RewardComponentError, match="failed on 3 samples"):
        pipe(problems(2), ["x", "a"])


# --------------------------------------------------------------------------- from a config entry


def test_build_from_a_config_entry(tmp_path, monkeypatch):
    (tmp_path / "exec_user_rewards.py").write_text(textwrap.dedent("""
        import asyncio
        def short(completions, **kwargs):
            return [1.0 if len(c) < 3 else 0.0 for c in completions]
        async def matches(completions, answer, level, **kwargs):
            return [float(c == a) + level_ for c, a, level_ in zip(completions, answer, level)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"type": "functions", "functions": [f"{tmp_path / 'exec_user_rewards.py'}:short",
                                               {"function": "exec_user_rewards:matches", "name": "m"}],
            "mode": "per_sample", "workers": 2, "timeout_s": 5.0, "columns": ["answer", "level"]}
    check_component_spec(spec)
    comp = build_component(spec)
    assert isinstance(comp, RewardFunctionsComponent) and comp.names == ("short", "m")
    assert comp(problems(3), ["0", "2", "long"]) == {"short": [1.0, 1.0, 0.0], "m": [1.0, 2.0, 2.0]}
    with pytest.raises(RewardComponentError, match="unknown field.*timeout"):
        check_component_spec({"type": "functions", "functions": [], "timeout": 1})
    with pytest.raises(RewardFunctionError, match="requires 'level', which is not a column"):
        build_component({**spec, "columns": ["answer"]})
