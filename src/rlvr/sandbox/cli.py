"""``rlvr sandbox``: check the machine's isolation, run one program, measure judging throughput.

    rlvr sandbox check                    # mechanisms + the hostile suite; exit 1 if any attack escapes
    rlvr sandbox run prog.py [--language python] [--stdin in.txt]   # one Result as a JSON line
    rlvr sandbox bench [--programs 100] [--slots 1,2]              # judged programs per second
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["add_sandbox_parser", "main"]

_SUFFIX = {".py": "python", ".sh": "bash", ".c": "c", ".js": "javascript"}


def add_sandbox_parser(sub) -> None:
    s = sub.add_parser("sandbox", help="the code sandbox: check it against hostile programs, run one "
                                       "program, benchmark judging")
    ss = s.add_subparsers(dest="sandbox_command", required=True)
    c = ss.add_parser("check", help="probe each isolation mechanism and run the hostile-program suite")
    c.add_argument("--only", help="comma-separated attack ids (e.g. R1,E6)")
    c.add_argument("--json", action="store_true", help="print the reports as JSON")
    r = ss.add_parser("run", help="run one program under the training limits; print its Result as JSON")
    r.add_argument("file", help="the program's source file")
    r.add_argument("--language", help="python | bash | c | javascript (default: from the file suffix)")
    r.add_argument("--stdin", metavar="FILE", help="file fed to the program's stdin")
    r.add_argument("--no-require-isolation", action="store_true",
                   help="run with a warning when a mechanism is missing instead of refusing")
    b = ss.add_parser("bench", help="judged programs per second (a+b over 3 tests) per slot count")
    b.add_argument("--programs", type=int, default=100)
    b.add_argument("--slots", default="1,2", help="comma-separated worker-slot counts")


def main(args) -> int:
    return {"check": _check, "run": _run, "bench": _bench}[args.sandbox_command](args)


def _mechanism_table() -> tuple[str, bool]:
    from rlvr.sandbox.core import probe

    caps = probe()
    rows = caps.table()
    width = max(len(r[0]) for r in rows)
    lines = ["isolation mechanisms:"] + [f"  {m.ljust(width)}  {state:7}  {info}" for m, state, info in rows]
    return "\n".join(lines), bool(caps.present.get("bwrap"))


def _check(args) -> int:
    from rlvr.sandbox.core import Sandbox, SandboxUnavailableError
    from rlvr.sandbox.hostile import ATTACKS, format_table, run_suite

    table, usable = _mechanism_table()
    print(table, flush=True)
    if not usable:
        print("sandbox check: bubblewrap is not usable here; nothing can be judged safely", file=sys.stderr)
        return 1
    attacks = ATTACKS
    if args.only:
        wanted = {a.strip().upper() for a in args.only.split(",") if a.strip()}
        unknown = wanted - {a.id for a in ATTACKS}
        if unknown:
            raise ValueError(f"unknown attack id(s) {sorted(unknown)}; known: {', '.join(a.id for a in ATTACKS)}")
        attacks = tuple(a for a in ATTACKS if a.id in wanted)
    try:
        sandbox = Sandbox(require_isolation=False, slots=1, quiet=True)
    except SandboxUnavailableError as err:
        print(f"sandbox check: {err}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    reports = run_suite(sandbox, attacks)
    if args.json:
        print(json.dumps([{**r.__dict__, "expected": list(r.expected)} for r in reports], indent=1))
    else:
        print(f"\nhostile-program suite ({len(reports)} attacks, {time.monotonic() - t0:.1f}s):")
        print(format_table(reports))
    escaped = [r.id for r in reports if not r.contained]
    unexpected = [r.id for r in reports if r.contained and not r.as_expected]
    missing = sandbox.caps.missing()
    print(f"\n{len(reports) - len(escaped)}/{len(reports)} contained; escapes: {', '.join(escaped) or 'none'}; "
          f"unexpected statuses: {', '.join(unexpected) or 'none'}; missing mechanisms: {', '.join(missing) or 'none'}")
    return 1 if escaped or unexpected else 0


def _run(args) -> int:
    from rlvr.sandbox import CodeVerifier, Sandbox, get_language
    from rlvr.sandbox.core import Limits

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {args.file}")
    name = args.language or _SUFFIX.get(path.suffix)
    if name is None:
        raise ValueError(f"cannot tell the language of {path.name}; pass --language")
    lang = get_language(name)
    stdin = Path(args.stdin).read_bytes() if args.stdin else b""
    sandbox = Sandbox(require_isolation=not args.no_require_isolation, slots=1)
    code = path.read_text(encoding="utf-8", errors="replace")
    base = Limits()
    files: dict[str, bytes | str] = {lang.filename: code}
    executable: tuple[str, ...] = ()
    if lang.compile:
        verifier = CodeVerifier(sandbox)
        import base64

        build = verifier._run(["/bin/sh", "-c", f"{lang.compile} >&2 && base64 -w0 {lang.artifact}"], b"",
                              lang.build_limits(base).replace(stdout_bytes=48 << 20), files)
        if build.status != "ok":
            build.status = "compile_error" if build.status != "sandbox_error" else build.status
            build.stdout = ""
            print(build.to_json())
            return 1
        files, executable = {lang.artifact: base64.b64decode(build.stdout)}, (lang.artifact,)
    result = sandbox.run(list(lang.run), stdin, lang.run_limits(base), files, executable)
    print(result.to_json())
    return 0 if result.status == "ok" else 1


def _bench(args) -> int:
    from rlvr.sandbox.bench import run_bench

    slots = [int(s) for s in args.slots.split(",") if s.strip()]
    if args.programs < 1 or not slots or min(slots) < 1:
        raise ValueError("--programs and every --slots value must be >= 1")
    for row in run_bench(args.programs, slots):
        print(f"slots={row['slots']}  programs={row['programs']}  runs={row['runs']}  "
              f"{row['programs_per_s']:.1f} programs/s  {row['runs_per_s']:.1f} runs/s  "
              f"{row['ms_per_run']:.1f} ms/run (wall per run x slots)  overhead {row['overhead_ms']:.1f} ms/run "
              f"over a bare python3 start ({row['bare_ms']:.1f} ms)")
    return 0
