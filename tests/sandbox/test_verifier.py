"""The I/O-test code verifier: extraction, comparison, languages, compile errors, limits, batches."""

from __future__ import annotations

import pytest

from rlvr.sandbox import (LANGUAGES, MAX_CODE_BYTES, CodeVerifier, Language, Limits, extract_program,
                          get_language, load_languages, normalise_output, outputs_match)

ADD = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}, {"input": "5 5\n", "output": "10\n"}]

# (language, right, wrong on test 2 only (a+b except when b < 0), compile/syntax error)
PROGRAMS = {
    "python": ("a, b = map(int, input().split())\nprint(a + b)",
               "a, b = map(int, input().split())\nprint(a + b if b >= 0 else 0)",
               "print(("),
    "bash": ("read a b\necho $((a + b))",
             "read a b\nif [ $b -ge 0 ]; then echo $((a + b)); else echo 0; fi",
             "if then fi ((("),
    "c": ('#include <stdio.h>\nint main(void){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a+b);return 0;}',
          '#include <stdio.h>\nint main(void){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",b>=0?a+b:0);return 0;}',
          "int main(void) { return 0"),
    "javascript": ("const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\n"
                   "console.log(a + b);",
                   "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\n"
                   "console.log(b >= 0 ? a + b : 0);",
                   "const = ;"),
}


@pytest.fixture(scope="module")
def verifier(sandbox):
    v = CodeVerifier(sandbox, limits=Limits(cpu_s=2, wall_s=10))
    yield v
    v.close()


def _need(language):
    ok, why = get_language(language).available()
    if not ok:
        pytest.skip(f"SKIPPED, NOT PASSED: {why}")


# ------------------------------------------------------------------ pure rules (no sandbox)

def test_extraction_takes_the_last_closed_fence_else_everything():
    assert extract_program("print(1)") == "print(1)"
    text = "idea\n```python\nprint(1)\n```\nbetter:\n```py\nprint(2)\n```\ndone"
    assert extract_program(text) == "print(2)\n"
    assert extract_program("```\nx\n```") == "x\n"
    assert extract_program("```python\nprint(1)") == "```python\nprint(1)"  # unclosed: whole text
    assert extract_program(None) == ""


def test_compare_strips_trailing_whitespace_per_line_only():
    assert outputs_match("3  \n4\t\n\n\n", "3\n4")
    assert outputs_match("a\r\nb\r\n", "a\nb\n")
    assert not outputs_match(" 3", "3")  # leading whitespace counts
    assert not outputs_match("3\n\n4", "3\n4")  # inner blank lines count
    assert not outputs_match("3", "3.0")
    assert normalise_output("x \ny  \n\n") == "x\ny"


def test_languages_are_data():
    assert {"python", "bash", "c", "javascript"} <= set(LANGUAGES)
    assert get_language("c").compile and get_language("c").artifact == "main"
    with pytest.raises(ValueError, match="unknown language"):
        get_language("cobol")
    with pytest.raises(ValueError, match="unknown limit"):
        Language("x", "x.x", ("x",), limits={"cpus": 1})


def test_user_languages_load_from_yaml(tmp_path, verifier):
    path = tmp_path / "langs.yaml"
    path.write_text("awk:\n  filename: main.awk\n  run: [awk, -f, main.awk]\n  requires: [awk]\n")
    [lang] = load_languages(path)
    try:
        _need("awk")
        v = verifier.verify("{ print $1 + $2 }", ADD, "awk")
        assert v.correct, v.detail
    finally:
        LANGUAGES.pop("awk", None)


# ------------------------------------------------------------------ judging in each language

@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_right_wrong_and_broken_programs(verifier, language):
    _need(language)
    right, partial, broken = PROGRAMS[language]
    v = verifier.verify(right, ADD, language)
    assert (v.status, v.passed, v.total, v.ran) == ("ok", 3, 3, True), v.detail
    assert v.rewards() == {"correct": 1.0, "pass_fraction": 1.0, "ran": 1.0}
    v = verifier.verify(partial, ADD, language)  # early stop at test 2
    assert (v.status, v.passed, len(v.per_test), v.ran) == ("wrong_answer", 1, 2, True), v.detail
    v = verifier.verify(partial, ADD, language, fraction=True)  # every test
    assert (v.passed, len(v.per_test)) == (2, 3) and v.rewards()["pass_fraction"] == pytest.approx(2 / 3)
    v = verifier.verify(broken, ADD, language)
    expected = "compile_error" if get_language(language).compile else "runtime_error"
    assert v.status == expected and not v.ran and v.rewards()["correct"] == 0.0


def test_compile_errors_stop_before_any_test(verifier):
    _need("c")
    v = verifier.verify("int main(void) { return x; }", ADD, "c")
    assert v.status == "compile_error" and v.runs == 1 and "x" in v.detail


def test_nonzero_exit_fails_even_with_the_right_output(verifier):
    v = verifier.verify("import sys\nprint(3)\nsys.exit(1)", ADD[:1])
    assert v.status == "runtime_error" and not v.correct and not v.ran


def test_timeouts_and_limits_per_problem(verifier):
    v = verifier.verify("while True: pass", ADD, limits={"cpu_s": 1, "wall_s": 3})
    assert v.status == "timeout" and v.runs == 1
    v = verifier.verify("x = bytearray(300 << 20)\nprint(3)", ADD[:1], limits={"memory_mb": 128})
    assert v.status == "memory"


def test_program_budget_is_enforced(sandbox):
    v = CodeVerifier(sandbox, program_wall_s=0.5).verify("import time\ntime.sleep(0.4)\nprint(3)", ADD[:1] * 4)
    assert v.status == "timeout" and "budget" in v.detail and v.runs < 4


def test_invalid_code_never_runs(verifier):
    for code in ("", "   \n", "x=1\n" * (MAX_CODE_BYTES // 4 + 1)):
        v = verifier.verify(code, ADD)
        assert v.status == "invalid_code" and v.runs == 0


def test_binary_garbage_output_is_wrong_not_a_crash(verifier):
    v = verifier.verify("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00\\x1b[31m3\\r\\n')", ADD[:1])
    assert v.status == "wrong_answer"


def test_batches_keep_order_and_judge_duplicates_once(verifier):
    right, partial, _ = PROGRAMS["python"]
    items = [{"code": c, "tests": ADD} for c in (right, partial, right, "print(", right)]
    verdicts = verifier.verify_batch(items)
    assert [v.status for v in verdicts] == ["ok", "wrong_answer", "ok", "runtime_error", "ok"]
    assert verdicts[0] is verdicts[2]  # judged once


def test_a_problem_needs_tests(verifier):
    with pytest.raises(ValueError, match="at least one test"):
        verifier.verify("print(1)", [])


class _FlakyLauncher:
    """A sandbox whose first ``fail`` runs end like bubblewrap's pid 1 failing to fork (EAGAIN)."""

    slots = 1

    def __init__(self, fail: int):
        self.fail, self.calls = fail, 0

    def run(self, argv, stdin=b"", limits=None, files=None, executable=()):
        from rlvr.sandbox import Result
        self.calls += 1
        if self.calls <= self.fail:
            return Result(status="runtime_error", exit_code=1,
                          stderr="bwrap: Can't fork for pid 1: Resource temporarily unavailable\n")
        a, b = map(int, stdin.split())
        return Result(status="ok", exit_code=0, stdout=f"{a + b}\n")


def test_a_launch_failure_of_bubblewrap_is_run_again_not_scored():
    from rlvr.sandbox.verifier import LAUNCH_ATTEMPTS
    flaky = _FlakyLauncher(fail=LAUNCH_ATTEMPTS - 1)
    v = CodeVerifier(flaky)
    verdict = v.verify("print(3)", ADD[:1])
    assert verdict.correct and flaky.calls == LAUNCH_ATTEMPTS and v.launch_retries == LAUNCH_ATTEMPTS - 1
    # it persists: the verdict stands (a program can print that line itself), nothing raises
    always = _FlakyLauncher(fail=10**9)
    verdict = CodeVerifier(always).verify("print(3)", ADD[:1])
    assert verdict.status == "runtime_error" and always.calls == LAUNCH_ATTEMPTS


def test_a_program_faking_the_launch_failure_gains_nothing(verifier):
    fake = "import sys\nsys.stderr.write(\"bwrap: Can't fork for pid 1: Resource temporarily unavailable\\n\")\nsys.exit(1)"
    before = verifier.launch_retries
    v = verifier.verify(fake, ADD)
    assert v.status == "runtime_error" and not v.correct and v.runs == 1
    assert verifier.launch_retries - before == 2  # run three times in all, then judged as it ended
