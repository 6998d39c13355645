"""Remote rewards (rlvr.rewards.remote): the client against the reference server, on the loopback only.

Values and order across chunks, the concurrency limit, timeouts, retries (5xx yes, 4xx no), a server that
dies or hangs, health-based names, the protocol's errors, the pipeline end to end, and the
``rlvr serve-reward --task arithmetic`` command in a subprocess."""

from __future__ import annotations

import http.client
import json
import math
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlvr.rewards.components import REWARD_COMPONENTS, RewardComponentError, RewardPipeline, build_component
from rlvr.rewards.remote import PROTOCOL, RemoteReward, RewardServer

ROOT = Path(__file__).resolve().parents[2]


class Echo:
    """Deterministic: ``num`` = the number in the text, ``plen`` = len(prompt); None for an empty text."""

    names = ("num", "plen")

    def __init__(self):
        self.calls = 0

    def __call__(self, problems, texts):
        self.calls += 1
        return {"num": [float(t) if t else None for t in texts], "plen": [len(p.prompt) for p in problems]}


@contextmanager
def serve(*scorers, **kw):
    server = RewardServer(list(scorers), **kw).start()
    try:
        yield server
    finally:
        server.stop()


def batch(n):
    problems = [SimpleNamespace(prompt="p" * (i % 7), answer=str(i), meta={"i": i}) if i % 2
                else {"prompt": "p" * (i % 7), "answer": str(i), "meta": {"i": i}} for i in range(n)]
    return problems, [str(i) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body: bytes, path="/score", headers=None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_values_in_order_across_chunks_and_names_from_health():
    scorer = Echo()
    with serve(scorer) as server:
        client = RemoteReward(server.url, batch_size=4, max_concurrency=3)
        assert client.names == ("num", "plen") and "remote" in REWARD_COMPONENTS
        problems, texts = batch(23)
        out = client(problems, texts)
        assert out["num"] == [float(i) for i in range(23)]
        assert out["plen"] == [float(i % 7) for i in range(23)]
        assert client.requests == 1 + 6 and scorer.calls == 6  # GET /health, then ceil(23/4) chunks
        assert (client.retries_used, client.failed_chunks) == (0, 0)
        assert client([], []) == {"num": [], "plen": []}
        # a prefix, a subset of names, a pickled copy, the registry's builder
        only = RemoteReward(server.url, names=["plen"], name="srv", batch_size=100)
        assert only.names == ("srv/plen",)
        assert pickle.loads(pickle.dumps(only))(problems[:3], texts[:3]) == {"srv/plen": [0.0, 1.0, 2.0]}
        built = build_component({"type": "remote", "url": server.url, "batch_size": 8})
        assert built(problems[:2], ["", "5"])["num"][1] == 5.0 and math.isnan(built(problems[:1], [""])["num"][0])


def test_concurrency_limit_is_respected():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    class Slow:
        names = ("x",)

        def __call__(self, problems, texts):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.05)
            with lock:
                state["now"] -= 1
            return {"x": [1.0] * len(texts)}

    with serve(Slow()) as server:
        for limit in (3, 1):
            state["max"] = 0
            out = RemoteReward(server.url, names=["x"], batch_size=2, max_concurrency=limit)(*batch(24))
            assert out["x"] == [1.0] * 24
            assert 1 <= state["max"] <= limit, state
        assert state["max"] == 1


def test_timeout_gives_nan_counts_and_the_call_returns(capsys):
    class SleepsOnSlow:
        names = ("x",)

        def __call__(self, problems, texts):
            if "slow" in texts:
                time.sleep(3)
            return {"x": [2.0] * len(texts)}

    with serve(SleepsOnSlow()) as server:
        client = RemoteReward(server.url, names=["x"], timeout_s=0.3, retries=0, batch_size=2)
        t0 = time.perf_counter()
        out = client([{"prompt": "", "answer": ""}] * 4, ["a", "b", "slow", "c"])
        assert time.perf_counter() - t0 < 2.0
        assert out["x"][:2] == [2.0, 2.0] and all(math.isnan(v) for v in out["x"][2:])
        assert client.failed_chunks == 1 and client.retries_used == 0
        err = capsys.readouterr().err
        assert err.count("warning: remote reward") == 1 and "timeout_s = 0.3" in err and "samples 2-3 of 4" in err


def test_retries_on_500_then_success_and_no_retry_on_400(capsys):
    class FailsFirst:
        names = ("x",)

        def __init__(self, k):
            self.k = k

        def __call__(self, problems, texts):
            if self.k > 0:
                self.k -= 1
                raise RuntimeError("not ready yet")
            return {"x": [float(t) for t in texts]}

    scorer = FailsFirst(2)
    with serve(scorer) as server:
        client = RemoteReward(server.url, names=["x"], retries=2, backoff_s=0.01)
        assert client(*batch(5))["x"] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert (client.requests, client.retries_used, client.failed_chunks) == (3, 2, 0)
        scorer.k = 5  # more failures than retries: NaN, counted, the server's error in the warning
        out = client(*batch(2))
        assert all(math.isnan(v) for v in out["x"]) and client.failed_chunks == 1
        assert "HTTP 500: RuntimeError: not ready yet" in capsys.readouterr().err
        # 400 (a name the server does not have): one request, no retry
        wrong = RemoteReward(server.url, names=["nope"], retries=3, backoff_s=0.01)
        assert math.isnan(wrong(*batch(1))["nope"][0])
        assert (wrong.requests, wrong.retries_used, wrong.failed_chunks) == (1, 0, 1)
        assert "HTTP 400: names: this server has no 'nope'; it serves x" in capsys.readouterr().err


def test_protocol_errors_name_the_field():
    class Boom:
        names = ("b",)

        def __call__(self, problems, texts):
            raise ValueError("broken scorer")

    with serve(Echo(), Boom(), max_body_bytes=2000) as server:
        ok = {"problems": [{"prompt": "q", "answer": "1"}], "texts": ["1"], "names": ["num"]}
        assert post(server.url, json.dumps(ok).encode()) == (200, {"components": {"num": [1.0]}})
        bad = [({"problems": [], "texts": [3]}, "texts[0]: expected a string, got int"),
               ({"problems": [], "texts": ["a"]}, "problems: 0 entries for 1 texts"),
               ({"problems": [{"prompt": "q", "answer": "1", "meta": 3}], "texts": ["a"]}, "problems[0].meta"),
               ({"problems": [{"prompt": "q"}], "texts": ["a"]}, "problems[0].answer: expected a string"),
               ({"texts": []}, "problems: expected a list"),
               ({"problems": [], "texts": [], "protocol": 99}, "protocol: 99"),
               ({"problems": [], "texts": [], "extra": 1}, "unknown field(s) extra")]
        for body, message in bad:
            status, answer = post(server.url, json.dumps(body).encode())
            assert status == 400 and message in answer["error"], (body, answer)
        assert post(server.url, b"{not json")[0] == 400
        assert post(server.url, json.dumps(ok).encode(), path="/nope")[0] == 404
        status, answer = post(server.url, json.dumps({**ok, "texts": ["x" * 3000]}).encode())
        assert status == 413 and "limit of 2000" in answer["error"]
        status, answer = post(server.url, json.dumps({**ok, "names": ["b"]}).encode())
        assert status == 500 and answer == {"error": "ValueError: broken scorer"}
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read()) == {"status": "ok", "protocol": PROTOCOL,
                                                          "names": ["num", "plen", "b"]}
        conn.close()
        with pytest.raises(ValueError, match="two scorers serve the name 'num'"):
            RewardServer([Echo(), Echo()])


def test_a_server_that_dies_mid_run_gives_nan_not_an_exception(capsys):
    holder = {}

    class DiesOnSecondCall:
        names = ("x",)
        calls = 0

        def __call__(self, problems, texts):
            self.calls += 1
            if self.calls == 2:
                holder["server"].stop()  # stops listening; this answer still goes out
            return {"x": [7.0] * len(texts)}

    with serve(DiesOnSecondCall()) as server:
        holder["server"] = server
        client = RemoteReward(server.url, names=["x"], batch_size=2, max_concurrency=1, retries=1, backoff_s=0.01)
        out = client(*batch(8))
        assert out["x"][:4] == [7.0] * 4 and all(math.isnan(v) for v in out["x"][4:])
        assert client.failed_chunks == 2 and client.retries_used == 2
        assert "ConnectionRefusedError" in capsys.readouterr().err
        assert all(math.isnan(v) for v in client(*batch(3))["x"])  # and it stays usable


def test_a_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections (the backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = RemoteReward(url, names=["x"], timeout_s=0.2, retries=1, backoff_s=0.0, batch_size=4)
        t0 = time.perf_counter()
        out = client(*batch(8))
        assert time.perf_counter() - t0 < 2.0
        assert all(math.isnan(v) for v in out["x"]) and client.failed_chunks == 2 and client.retries_used == 2
        with pytest.raises(RewardComponentError, match=f"reward server at {url} cannot be reached"):
            RemoteReward(url, timeout_s=0.2, retries=0)


def test_construction_errors_are_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RewardComponentError, match=f"{url} cannot be reached.*ConnectionRefusedError"):
        RemoteReward(url, retries=0)
    for kwargs, field in [({"url": "127.0.0.1:8000"}, "url"), ({"url": url, "names": ["x"], "batch_size": 0}, "batch_size"),
                          ({"url": url, "names": ["x"], "timeout_s": 0}, "timeout_s"),
                          ({"url": url, "names": ["x"], "retries": -1}, "retries"),
                          ({"url": url, "names": ["x", "x"]}, "names"), ({"url": url, "names": []}, "names")]:
        with pytest.raises(RewardComponentError, match=f"'remote'\\): {field} = "):
            RemoteReward(**kwargs)
    with pytest.raises(RewardComponentError, match="unknown field"):
        build_component({"type": "remote", "url": url, "timeout": 3})


def test_pipeline_counts_the_failures():
    class Partial:
        names = ("score",)

        def __call__(self, problems, texts):
            if "boom" in texts:
                raise RuntimeError("boom")
            return {"score": [None if t == "skip" else 0.5 for t in texts]}

    with serve(Partial()) as server:
        remote = RemoteReward(server.url, batch_size=2, retries=0)
        pipeline = RewardPipeline([remote], on_failure="zero")
        texts = ["a", "skip", "boom", "b", "c", "d"]
        out, seconds = pipeline([{"prompt": "", "answer": ""}] * len(texts), texts)
        assert out["score"].tolist() == [0.5, 0.0, 0.0, 0.0, 0.5, 0.5]
        assert out["reward_failures"].tolist() == [0, 1, 1, 1, 0, 0]
        assert pipeline.failures == {"score": 3} and "score" in seconds
        stop = RewardPipeline([remote], on_failure="stop", max_failures=1)
        with pytest.raises(RewardComponentError, match="failed on 3 samples"):
            stop([{"prompt": "", "answer": ""}] * len(texts), texts)


def test_cli_serves_the_arithmetic_verifier():
    from rlvr.tasks import make_task

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlvr.cli", "serve-reward", "--task", "arithmetic",
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert line and f"http://127.0.0.1:{port}" in line[0] and "reward, correct, format" in line[0], \
            (line, proc.poll())
        task = make_task("arithmetic")
        problems = task.problems("eval", 2)
        right = task.format_sft_target(problems[0])
        wrong = str(int(task.format_sft_target(problems[1])) + 1)
        client = RemoteReward(f"http://127.0.0.1:{port}")
        assert client.names == ("reward", "correct", "format")
        out = client(problems, [right, wrong])
        assert out == {"reward": [1.0, 0.0], "correct": [1.0, 0.0], "format": [1.0, 1.0]}
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_cli_refuses_nothing_to_serve_in_one_line():
    from rlvr.cli import _parser
    from rlvr.cli.serve_reward import run

    for argv, message in [(["serve-reward", "--port", "0"], "nothing to serve; give --task NAME and/or --component JSON"),
                          (["serve-reward", "--component", "{oops"], "--component '{oops': not JSON"),
                          (["serve-reward", "--task-options", "{}"], "--task-options needs --task NAME")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            run(_parser().parse_args(argv))


def test_kept_alive_connections_survive_a_server_restart():
    with serve(Echo()) as first:
        client = RemoteReward(first.url, names=["num"], retries=0, max_concurrency=2, batch_size=2)
        assert client(*batch(4))["num"] == [0.0, 1.0, 2.0, 3.0]
        assert client._idle  # kept open for the next call
        port = first.port
    with serve(Echo(), port=port):  # the same address: the kept connections are stale, new ones are made
        assert client(*batch(4))["num"] == [0.0, 1.0, 2.0, 3.0]
        assert (client.retries_used, client.failed_chunks) == (0, 0)
    client.close()
