"""The python tool runs model-written code in the sandbox, never in this process."""

import os

from rlvr.envs import PythonTool, make_env


def test_the_python_tool_returns_stdout_or_how_the_program_failed(sandbox1):
    tool = PythonTool(sandbox=sandbox1, cpu_s=1.0)
    assert tool("print(6 * 7)") == "42"
    assert tool("raise ValueError('no')").startswith("runtime_error: ValueError: no")
    assert tool("while True: pass").startswith("timeout")
    marker = f"/tmp/rlvr_python_tool_{os.getpid()}"
    tool(f"open('{marker}', 'w').write('x')")  # the sandbox's /tmp is its own
    assert not os.path.exists(marker)


def test_a_tools_environment_with_python_and_the_calculator(sandbox1):
    env = make_env("tools", tools=["python", "calculator"], max_calls=3)
    env.tools["python"] = PythonTool(sandbox=sandbox1)
    env.reset(type("P", (), {"prompt": "p"})(), 0)
    assert env.step("[python:print(sum(range(10)))]").observation == "{45}"
    assert env.step("[calculator:2*21]").observation == "{42}"
    assert env.step("[shell:ls]").observation.startswith("{? (tools:")
