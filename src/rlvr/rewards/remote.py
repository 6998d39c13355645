"""Remote rewards: a small HTTP protocol (a batch in, named reward components out), its client and a server.

A reward that lives in another process or on another machine (a verifier with heavy dependencies, a
reward model on its own GPU, an LLM judge, someone else's service) is reached over HTTP with JSON bodies.

**Protocol** (version :data:`PROTOCOL`, UTF-8 JSON both ways):

``POST /score``::

    {"problems": [{"prompt": str, "answer": str, "meta": {...}}, ...],     # one per text
     "texts": [str, ...],                                                   # the completions
     "names": [str, ...],        # optional: only these components (default: all the server's)
     "protocol": 1}              # optional: the version the client speaks
    -> 200 {"components": {name: [float | null, ...]}}                       # one list of len(texts) per name

  ``null`` marks a sample that component could not score (the client reads it as NaN, a counted
  failure; the server sends a component's None, NaN or infinity as null). ``meta`` is optional (default
  ``{}``); the client sends a value JSON cannot hold as its ``str()``.

``GET /health`` -> ``200 {"status": "ok", "protocol": 1, "names": [...]}``: the components it serves.

Errors carry ``{"error": "<one line>"}``: **400** for a bad request (the line names the field, e.g.
``texts[3]: expected a string, got int``), **404** an unknown path, **411** a body without
Content-Length, **413** a body over the server's limit (64 MiB by default), **500** a component that
raised or returned something that is not one number (or null) per text (the line holds its error).
A client retries connection errors, timeouts and 5xx answers, never 4xx (the same request would fail
again). The server speaks HTTP/1.1 and keeps connections open; the client reuses them.

**Client**: :class:`RemoteReward` is the ``remote`` reward component (``reward.components``)::

    - {type: remote, url: "http://127.0.0.1:8000"}                  # names: asked from GET /health once
    - {type: remote, url: "http://10.0.0.5:8000", names: [rm], batch_size: 32, max_concurrency: 8}
    - {type: remote, name: server, url: "http://127.0.0.1:8001"}    # logged as server/<each name>

It splits a batch into requests of ``batch_size`` samples, keeps at most ``max_concurrency`` of them in
flight, and puts the answers back in order. A request that still fails after ``retries`` retries gives
NaN for its samples and a ``warning:`` line on stderr (the first 3 failed requests, then at 10, 100,
1000...): a reward server that is slow, down or broken costs those samples, never the run (the
pipeline's ``reward.on_failure`` decides what a failed sample means).

**Server**: :class:`RewardServer` serves any objects that follow the component protocol
(:class:`~rlvr.rewards.components.RewardComponent`: ``.names`` and ``__call__(problems, texts)``): a
task's verifier (``rlvr serve-reward --task arithmetic``), reward components from a config
(``--component '{"type": "reward_model", ...}'``), or your own objects from Python::

    with RewardServer([my_scorer], port=8000) as server:   # started in a background thread
        ...                                                  # server.url == "http://127.0.0.1:8000"

Only the standard library is used on both sides (``http.client``, ``http.server``).
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from rlvr.rewards.components import RewardComponentError, register_component
from rlvr.rewards.functions import warn_this_time

__all__ = ["MAX_BODY_BYTES", "PROTOCOL", "RemoteReward", "RewardServer", "ServedProblem", "parse_score_request"]

#: The protocol version, in ``GET /health`` (checked by the client) and optionally in a request.
PROTOCOL = 1
#: Largest request body the server reads (larger ones get 413).
MAX_BODY_BYTES = 64 << 20
#: Failed requests of one client that are printed in full before only milestones are.
_REQUEST_FIELDS = ("problems", "texts", "names", "protocol")
_PROBLEM_FIELDS = ("prompt", "answer", "meta")


# --------------------------------------------------------------------------- client


class _Retryable(Exception):
    """A request that may succeed when sent again (connection error, timeout, 5xx)."""


class _Fatal(Exception):
    """A request that would fail the same way again (4xx, a malformed answer)."""


@register_component("remote")
class RemoteReward:
    """The reward components a reward server computes, asked for over HTTP (see the module docstring).

    Args:
        url: the server, ``http://host:port`` (a path prefix is kept: ``http://h:8000/rm`` posts to
            ``/rm/score``); ``https://`` works too.
        names: the server's components to ask for; None asks ``GET /health`` once, here (an unreachable
            server then raises :class:`RewardComponentError` naming the url). Given, nothing is sent
            until the first batch.
        timeout_s: seconds one HTTP request may take to connect and to start answering (a socket
            timeout on each wait after that); a request that runs out counts as a failed try.
        retries: further tries of a request after a connection error, a timeout or a 5xx answer (a 4xx
            answer is never retried).
        backoff_s: the wait before the first retry, doubled before each next one.
        max_concurrency: requests in flight at once (each a thread of this process).
        batch_size: samples per request.
        name: an optional prefix for the names on this side: the server's component ``x`` is logged as
            ``<name>/x`` (e.g. to serve a task's ``reward``/``correct`` without clashing with the local
            verifier's).

    Attributes:
        names: the component names this returns (prefixed when ``name`` is set).
        requests / retries_used / failed_chunks: HTTP requests sent (tries included), retries made, and
            requests that failed for good (their samples are NaN).
    """

    def __init__(self, url: str, names: Sequence[str] | None = None, timeout_s: float = 30.0, retries: int = 2,
                 backoff_s: float = 0.5, max_concurrency: int = 4, batch_size: int = 64,
                 name: str | None = None) -> None:
        self.url = _check_url(url)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self.timeout_s = _check_number("timeout_s", timeout_s, positive=True)
        self.retries = _check_int("retries", retries, 0)
        self.backoff_s = _check_number("backoff_s", backoff_s, positive=False)
        self.max_concurrency = _check_int("max_concurrency", max_concurrency, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        if name is not None and (not isinstance(name, str) or not name):
            raise RewardComponentError(f"reward.components (type 'remote'): name = {name!r}; expected a "
                                       "non-empty string (the prefix of this server's component names)")
        self.prefix = name
        self.requests = 0
        self.retries_used = 0
        self.failed_chunks = 0
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self.server_names: tuple[str, ...] = _check_names(names) if names is not None else self._health_names()
        self.names: tuple[str, ...] = tuple(f"{name}/{n}" for n in self.server_names) if name else self.server_names

    def __repr__(self) -> str:
        return f"RemoteReward(url={self.url!r}, names={list(self.names)!r})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"], state["_idle"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._idle = []

    def close(self) -> None:
        """Close the kept-alive connections (new ones are opened if it is called again)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection (and True), or a new one (and False)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout_s), False

    def _release(self, conn: http.client.HTTPConnection, keep: bool) -> None:
        with self._lock:
            if keep and len(self._idle) < self.max_concurrency:
                self._idle.append(conn)
                return
        conn.close()

    def __call__(self, problems: Sequence[Any], texts: Sequence[str]) -> dict[str, list[float]]:
        """One list of ``len(texts)`` floats per name; NaN for every sample of a request that failed."""
        texts = list(texts)
        problems = list(problems)
        if len(problems) != len(texts):
            raise RewardComponentError(f"remote reward {self.url}: {len(problems)} problems for {len(texts)} "
                                       "texts; give one problem per text")
        n = len(texts)
        starts = list(range(0, n, self.batch_size))
        work = [(s, problems[s:s + self.batch_size], texts[s:s + self.batch_size], n) for s in starts]
        if len(work) <= 1 or self.max_concurrency == 1:
            parts = [self._chunk(*w) for w in work]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(work)),
                                    thread_name_prefix="rlvr-remote-reward") as pool:
                parts = list(pool.map(lambda w: self._chunk(*w), work))
        out: dict[str, list[float]] = {name: [] for name in self.names}
        for (start, _, chunk_texts, _), values in zip(work, parts):
            for local, remote in zip(self.names, self.server_names):
                out[local].extend(values[remote] if values is not None else [math.nan] * len(chunk_texts))
        return out

    # ------------------------------------------------------------------ one request

    def _chunk(self, start: int, problems: list, texts: list[str], total: int) -> dict[str, list[float]] | None:
        """The values of one chunk, or None once it has failed for good (warned and counted)."""
        tries = 0
        try:
            body = json.dumps({"protocol": PROTOCOL, "names": list(self.server_names),
                               "problems": [_problem_dict(p) for p in problems], "texts": texts},
                              default=str).encode()
            for attempt in range(self.retries + 1):
                if attempt:
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                    with self._lock:
                        self.retries_used += 1
                tries += 1
                try:
                    return self._parse_scores(self._request("POST", "/score", body), len(texts))
                except _Retryable as err:
                    error: BaseException = err
        except _Fatal as err:
            error = err
        except Exception as err:  # noqa: BLE001 - a server problem never stops the run; it is counted
            error = err
        with self._lock:
            self.failed_chunks += 1
            count = self.failed_chunks
        if warn_this_time(count):
            detail = str(error) if isinstance(error, (_Retryable, _Fatal)) else f"{type(error).__name__}: {error}"
            print(f"warning: remote reward {self.url}: a request of {len(texts)} samples (samples {start}-"
                  f"{start + len(texts) - 1} of {total}) failed after {tries} tr{'y' if tries == 1 else 'ies'}: "
                  f"{' '.join(detail.split())[:300]}; its samples count as failures ({count} failed "
                  f"request{'s' if count > 1 else ''} so far)", file=sys.stderr, flush=True)
        return None

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """The JSON answer of one HTTP request; :class:`_Retryable` or :class:`_Fatal` when there is none.

        Connections are kept open and reused (HTTP/1.1 keep-alive). A reused connection the server has
        closed meanwhile fails at once: the request is then sent again on a new one, not counted as a try."""
        with self._lock:
            self.requests += 1
        deadline = time.monotonic() + self.timeout_s
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        while True:
            conn, reused = self._connection()
            try:
                if conn.sock is None:
                    conn.connect()
                    # headers and body leave in two writes: no waiting on the first one's ACK (Nagle)
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                else:
                    conn.sock.settimeout(self.timeout_s)
                conn.request(method, self._base + path, body=body, headers=headers)
                conn.sock.settimeout(max(deadline - time.monotonic(), 1e-3))  # connect + send + wait <= timeout_s
                response = conn.getresponse()
                if conn.sock is not None:
                    conn.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                raw = response.read()
                status = response.status
            except TimeoutError:
                conn.close()
                raise _Retryable(f"{method} {path}: no answer within timeout_s = {self.timeout_s:g} s") from None
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                if reused and isinstance(err, (ConnectionError, http.client.RemoteDisconnected)):
                    continue  # a kept-alive connection the server closed: once more on a new connection
                raise _Retryable(f"{method} {path}: {type(err).__name__}: {err}") from None
            except BaseException:
                conn.close()
                raise
            self._release(conn, keep=not response.will_close)
            break
        if status != 200:
            try:
                message = json.loads(raw)["error"]
            except Exception:  # noqa: BLE001 - not our server's JSON error: show the start of the body
                message = raw[:200].decode("utf-8", "replace")
            error = f"{method} {path}: HTTP {status}: {message}"
            raise (_Retryable if status >= 500 else _Fatal)(error)
        try:
            return json.loads(raw)
        except ValueError as err:
            raise _Fatal(f"{method} {path}: the answer is not JSON ({err}): {raw[:100]!r}") from None

    def _parse_scores(self, answer: Any, n: int) -> dict[str, list[float]]:
        components = answer.get("components") if isinstance(answer, dict) else None
        if not isinstance(components, dict):
            raise _Fatal(f'POST /score: the answer has no "components" object: {str(answer)[:100]}')
        out = {}
        for name in self.server_names:
            values = components.get(name)
            if not isinstance(values, list):
                raise _Fatal(f"POST /score: the answer has no component {name!r}; it has: "
                             f"{', '.join(map(str, components)) or 'none'}")
            if len(values) != n:
                raise _Fatal(f"POST /score: component {name!r} has {len(values)} values for {n} texts")
            try:
                out[name] = [math.nan if v is None else float(v) for v in values]
            except (TypeError, ValueError):
                raise _Fatal(f"POST /score: component {name!r} holds a value that is not a number or "
                             "null") from None
        return out

    def _health_names(self) -> tuple[str, ...]:
        where = f"reward.components (type 'remote'): the reward server at {self.url}"
        error: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                health = self._request("GET", "/health")
                break
            except _Retryable as err:
                error = err
            except _Fatal as err:
                raise RewardComponentError(f"{where} answers GET /health with an error ({err}); is it an rlvr "
                                           "reward server?") from None
        else:
            raise RewardComponentError(f"{where} cannot be reached ({error}); start it (e.g. rlvr serve-reward "
                                       "--task NAME --port PORT) or check the url") from None
        if not isinstance(health, dict) or not isinstance(health.get("names"), list):
            raise RewardComponentError(f'{where} answers GET /health without a "names" list: {str(health)[:200]}')
        if health.get("protocol") != PROTOCOL:
            raise RewardComponentError(f"{where} speaks protocol {health.get('protocol')!r}; this rlvr speaks "
                                       f"{PROTOCOL}; update one of them")
        try:
            return _check_names(health["names"])
        except RewardComponentError as err:
            raise RewardComponentError(f"{where} serves unusable names: {err}") from None


def _problem_dict(p: Any) -> dict:
    """A problem (``rlvr.tasks.base.Problem``, any object with prompt/answer/meta, a dict, or a prompt
    string) as the protocol's JSON object."""
    if isinstance(p, str):
        return {"prompt": p, "answer": "", "meta": {}}
    if isinstance(p, (dict, Mapping)):
        prompt, answer, meta = p.get("prompt"), p.get("answer"), p.get("meta")
    else:
        prompt, answer, meta = getattr(p, "prompt", None), getattr(p, "answer", None), getattr(p, "meta", None)
    return {"prompt": "" if prompt is None else str(prompt), "answer": "" if answer is None else str(answer),
            "meta": meta if type(meta) is dict else dict(meta) if isinstance(meta, Mapping) else {}}


def _check_url(url: Any) -> str:
    ok = isinstance(url, str)
    if ok:
        parts = urlsplit(url.strip())
        try:
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
        except ValueError:  # a port that is not a number
            ok = False
    if not ok:
        raise RewardComponentError(f"reward.components (type 'remote'): url = {url!r}; expected "
                                   "http://host:port (e.g. http://127.0.0.1:8000)")
    return url.strip().rstrip("/")


def _check_names(names: Any) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [names]
    if (not isinstance(names, (list, tuple)) or not names
            or not all(isinstance(n, str) and n for n in names)):
        raise RewardComponentError(f"reward.components (type 'remote'): names = {names!r}; expected a non-empty "
                                   "list of component names (or leave it out to ask the server)")
    if len(set(names)) != len(names):
        raise RewardComponentError(f"reward.components (type 'remote'): names = {list(names)!r} repeats a name")
    return tuple(names)


def _check_int(field_name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RewardComponentError(f"reward.components (type 'remote'): {field_name} = {value!r}; expected an "
                                   f"integer >= {low}")
    return value


def _check_number(field_name: str, value: Any, positive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise RewardComponentError(f"reward.components (type 'remote'): {field_name} = {value!r}; expected a "
                                   f"number {'> 0' if positive else '>= 0'} (seconds)")
    return float(value)


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class ServedProblem:
    """A problem as a served component sees it (the fields of ``rlvr.tasks.base.Problem``)."""

    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, hash=False)


class _BadRequest(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_score_request(body: Any, served: Sequence[str]) -> tuple[list[ServedProblem], list[str], list[str]]:
    """``(problems, texts, names)`` of a ``POST /score`` body (already JSON-decoded); ValueError naming the
    field when it does not follow the protocol. ``served``: the server's component names."""
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object with problems and texts, got {type(body).__name__}")
    unknown = sorted(set(body) - set(_REQUEST_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; a request has {', '.join(_REQUEST_FIELDS)}")
    if "protocol" in body and body["protocol"] != PROTOCOL:
        raise ValueError(f"protocol: {body['protocol']!r}; this server speaks protocol {PROTOCOL}")
    for key in ("problems", "texts"):
        if not isinstance(body.get(key), list):
            raise ValueError(f"{key}: expected a list, got "
                             f"{'nothing' if key not in body else type(body[key]).__name__}")
    texts = body["texts"]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}]: expected a string, got {type(t).__name__}")
    raw = body["problems"]
    if len(raw) != len(texts):
        raise ValueError(f"problems: {len(raw)} entries for {len(texts)} texts; send one problem per text")
    problems = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise ValueError(f"problems[{i}]: expected an object {{prompt, answer, meta}}, got {type(p).__name__}")
        extra = sorted(set(p) - set(_PROBLEM_FIELDS))
        if extra:
            raise ValueError(f"problems[{i}]: unknown field(s) {', '.join(extra)}; a problem has prompt, answer, meta")
        for key in ("prompt", "answer"):
            if not isinstance(p.get(key), str):
                raise ValueError(f"problems[{i}].{key}: expected a string, got "
                                 f"{'nothing' if key not in p else type(p[key]).__name__}")
        meta = p.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError(f"problems[{i}].meta: expected an object, got {type(meta).__name__}")
        problems.append(ServedProblem(p["prompt"], p["answer"], meta))
    names = body.get("names")
    if names is None:
        names = list(served)
    else:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"names: expected a list of component names, got {names!r}")
        missing = [n for n in names if n not in served]
        if missing:
            raise ValueError(f"names: this server has no {', '.join(map(repr, missing))}; it serves "
                             f"{', '.join(served)}")
    return problems, list(texts), names


class RewardServer:
    """Serves reward components over the protocol of this module (HTTP on the standard library).

    Built on ``http.server.ThreadingHTTPServer``: one thread per connection. A reward server's work is
    Python (a verifier) or a library that releases the GIL (a model's forward), so threads are enough,
    and the server needs no dependency beyond the standard library. Components are called from several
    threads at once unless ``serialize`` is set (for a component that is not thread-safe).

    Args:
        scorers: objects following the component protocol (``.names``, ``__call__(problems, texts)``);
            their names must be distinct. Each gets :class:`ServedProblem` objects.
        host, port: where to listen; port 0 picks a free one (see :attr:`url`).
        max_body_bytes: larger request bodies get 413.
        serialize: one batch at a time (a lock around the components).
        log: print one line per request to stderr (default: quiet).
        idle_timeout_s: a connection that sends nothing for this long is closed.

    Attributes:
        requests: ``POST /score`` requests answered (any status).
    """

    def __init__(self, scorers: Sequence[Any] | Any, host: str = "127.0.0.1", port: int = 0, *,
                 max_body_bytes: int = MAX_BODY_BYTES, serialize: bool = False, log: bool = False,
                 idle_timeout_s: float = 300.0) -> None:
        if hasattr(scorers, "names") and callable(scorers):
            scorers = [scorers]
        self.scorers = list(scorers)
        if not self.scorers:
            raise ValueError("RewardServer: no scorers; give at least one reward component to serve")
        names: list[str] = []
        for s in self.scorers:
            got = getattr(s, "names", None)
            if not callable(s) or not isinstance(got, (list, tuple)) or not got:
                raise ValueError(f"RewardServer: {s!r} is not a reward component (it needs .names, a list of "
                                 "names, and __call__(problems, texts))")
            for n in got:
                if n in names:
                    raise ValueError(f"RewardServer: two scorers serve the name {n!r}; names must be distinct")
                names.append(str(n))
        self.names: tuple[str, ...] = tuple(names)
        self.max_body_bytes = int(max_body_bytes)
        self.requests = 0
        self._serialize = threading.Lock() if serialize else None
        self._count = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serving = False
        self._closed = False
        self._connections: set[socket.socket] = set()  # open client connections (guarded by _count)
        handler = type("Handler", (_Handler,), {"reward_server": self, "quiet": not log,
                                                "timeout": idle_timeout_s})
        server_cls = _Server6 if ":" in host else _Server
        self.httpd = server_cls((host, port), handler)
        self.host = host
        self.port = self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """``http://host:port`` (the port chosen when 0 was given)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> RewardServer:
        """Serve in a background (daemon) thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, name="rlvr-reward-server",
                                            daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from another thread) or KeyboardInterrupt."""
        self._serving = True
        try:
            self.httpd.serve_forever()
        finally:
            self._serving = False
            self.httpd.server_close()

    def stop(self) -> None:
        """Stop listening (new connections are refused) and close the kept-alive connections; a request in
        progress still gets its answer (in its own thread), on a connection closed after it."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None or self._serving:
            self.httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        self.httpd.server_close()
        with self._count:
            connections = list(self._connections)
        for conn in connections:  # an idle connection's handler wakes up to an end of input and closes it
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def score(self, problems: list, texts: list[str], names: Sequence[str]) -> dict[str, list[float | None]]:
        """Each requested component's values for the batch (None where it failed); raises on a component
        that raises or answers with the wrong shape."""
        if not texts:
            return {n: [] for n in names}
        wanted = set(names)
        out: dict[str, list[float | None]] = {}
        for s in self.scorers:
            if not wanted.intersection(s.names):
                continue
            if self._serialize is not None:
                with self._serialize:
                    got = s(problems, texts)
            else:
                got = s(problems, texts)
            for name in s.names:
                if name in wanted:
                    out[name] = _values(got, name, len(texts))
        return {n: out[n] for n in names}


def _values(got: Any, name: str, n: int) -> list[float | None]:
    if not isinstance(got, Mapping) or name not in got:
        keys = ", ".join(map(str, got)) if isinstance(got, Mapping) else type(got).__name__
        raise ValueError(f"component {name!r} is missing from the scorer's result (it returned: {keys})")
    values = got[name]
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != n:
        raise ValueError(f"component {name!r} returned {len(values)} values for {n} texts")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"component {name!r} returned {v!r} for text {i}; expected a number or None") from None
        out.append(f if math.isfinite(f) else None)
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung component never keeps the process alive
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the client went away (e.g. its timeout): quiet
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """One connection: ``GET /health`` and ``POST /score`` (see the module docstring)."""

    server_version = f"rlvr-reward-server/{PROTOCOL}"
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections
    wbufsize = -1  # buffered: the headers and a small body leave in one segment (flushed after each request)
    disable_nagle_algorithm = True
    reward_server: RewardServer
    quiet = True

    def setup(self) -> None:
        super().setup()
        with self.reward_server._count:
            self.reward_server._connections.add(self.connection)

    def finish(self) -> None:
        with self.reward_server._count:
            self.reward_server._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict, close: bool = False) -> None:
        data = json.dumps(payload, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close or self.reward_server._closed:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") == "/health":
            self._send(200, {"status": "ok", "protocol": PROTOCOL, "names": list(self.reward_server.names)})
        else:
            self._send(404, {"error": f"no such path {self.path!r}; this server answers GET /health and "
                                      "POST /score"})

    def do_POST(self) -> None:
        server = self.reward_server
        with server._count:
            server.requests += 1
        try:
            if self.path.split("?", 1)[0].rstrip("/") != "/score":
                raise _BadRequest(404, f"no such path {self.path!r}; POST /score (or GET /health)")
            body = self._read_body(server.max_body_bytes)
            try:
                request = json.loads(body)
            except ValueError as err:
                raise _BadRequest(400, f"the body is not JSON: {err}") from None
            try:
                problems, texts, names = parse_score_request(request, server.names)
            except ValueError as err:
                raise _BadRequest(400, str(err)) from None
        except _BadRequest as err:
            # the body may be unread (411/413): close the connection rather than read it
            self._send(err.status, {"error": str(err)}, close=err.status in (411, 413))
            return
        try:
            components = server.score(problems, texts, names)
        except Exception as err:  # noqa: BLE001 - a component's error goes back to the client as a 500
            self._send(500, {"error": " ".join(f"{type(err).__name__}: {err}".split())[:1000]})
            return
        self._send(200, {"components": components})

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _BadRequest(411, "chunked bodies are not accepted; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise _BadRequest(411, "no Content-Length; send the body with its length")
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            raise _BadRequest(400, f"Content-Length: {length!r} is not a length") from None
        if size > limit:
            raise _BadRequest(413, f"the body has {size} bytes, more than this server's limit of {limit}; send "
                                   "smaller batches (batch_size)")
        body = self.rfile.read(size)
        if len(body) != size:
            raise _BadRequest(400, f"the body ended after {len(body)} of its {size} bytes (Content-Length)")
        return body
