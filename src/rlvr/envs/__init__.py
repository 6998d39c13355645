"""Environments for multi-turn episodes: the protocol (:mod:`rlvr.envs.base`) and the built-in ones."""

from rlvr.envs.base import ENVIRONMENTS, Environment, EnvStep, make_env, register_env
from rlvr.envs.chain_oracle import ChainOracle

__all__ = ["ENVIRONMENTS", "ChainOracle", "EnvStep", "Environment", "make_env", "register_env"]
