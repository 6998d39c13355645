"""Shared set-up for task tests. Nothing here may reach the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

#: Completions every verifier must survive, scoring 0 (never raising).
HOSTILE_COMPLETIONS = [
    "",
    " ",
    "\x00",
    "1" * 1_000_000,
    "é∑😀",
    "<answer>",
    "12 13",
    "-0",
    "+5",
    "5\n",
    "5 extra words",
    "NaN",
    "1e3",
    "<answer>" * 100_000,
    "</answer>" * 1_000,
    "<answer></answer>",
    "<answer>\x00</answer>",
    "\\boxed{" * 5_000,
    "9" * 5_000,
    "١٢",  # Arabic-Indic digits: int() accepts them, the verifiers must not
    "inf",
    "-",
]


def pytest_generate_tests(metafunc):
    """Run every test that takes a ``hostile_completion`` argument once per hostile input."""
    if "hostile_completion" in metafunc.fixturenames:
        ids = [f"{i}:{c[:12]!r}" for i, c in enumerate(HOSTILE_COMPLETIONS)]
        metafunc.parametrize("hostile_completion", HOSTILE_COMPLETIONS, ids=ids)
