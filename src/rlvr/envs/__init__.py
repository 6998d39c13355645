"""Environments for multi-turn episodes: the protocol (:mod:`rlvr.envs.base`) and the built-in ones."""

from rlvr.envs.base import ENVIRONMENTS, Environment, EnvStep, env_class, make_env, register_env
from rlvr.envs.chain_oracle import ChainOracle
from rlvr.envs.guess import Guess
from rlvr.envs.tools import TOOLS, Calc, PythonTool, ToolCalls, calculator
from rlvr.envs.trl_tools import TRLEnvironment, parse_tool_calls

__all__ = ["ENVIRONMENTS", "TOOLS", "Calc", "ChainOracle", "EnvStep", "Guess", "Environment", "PythonTool", "ToolCalls", "TRLEnvironment",
           "calculator", "env_class", "make_env", "parse_tool_calls", "register_env"]
