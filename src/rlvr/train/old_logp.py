"""When ``old_logp`` need not be recomputed: the rule (a pure function) and the facts it reads.

PPO's ``old_logp`` is the log-prob of each sampled token under the policy *before this step's
updates*. The learner normally recomputes it with a no-grad forward over the whole batch. When the
rollout engine sampled from exactly that policy (same module and weights version, the same
distribution: logits / temperature with nothing truncated), its ``rollout_logp`` already *is* that
number, computed a second way (a KV-cached decode instead of one full forward), and the forward is
redundant (16% of a step in issue 14's profile).

Tolerance. The two computations agree to float reassociation; the guard is
``tests/rollout/test_hf_engine.py::test_engine_logprobs_equal_a_forward_pass`` (and the lean
engine's contract test): ``|rollout_logp - forward logp| <= 1e-4`` per token. The switch needs
exactly that bound and it is safe for the ratio: with reuse, the first minibatch's ratio is
``exp(logp - rollout_logp) = exp(delta)`` with ``|delta| <= 1e-4``, i.e. within ``1 +- 1e-4`` of the
recomputed ratio (exactly 1), three orders of magnitude inside any PPO clip range (``eps`` = 0.2,
or 0.28 / 0.1 for asymmetric clips), so no token is clipped that would not be, and every later
minibatch's ratio moves by the same factor ``<= 1 +- 1e-4`` (a sequence-level ratio by at most
``exp(L * 1e-4)`` for a geometric/sum over ``L`` tokens; GSPO's length-normalised one by ``1e-4``).
The policy-gradient weight ``ratio * A`` therefore changes by at most ``1e-4`` relative, far below
the run-to-run noise of sampling.

Never reused (the rule returns the reason): a staleness bound ``runtime.max_staleness > 0`` (async
mode's default: decoupled PPO needs ``old_logp`` = the learner's proximal policy, recomputed now, not
the behaviour policy); replayed or stale rows (their version is not the learner's); an off-policy /
mismatch correction (``tis``, ``mis``, ``decoupled``, ...: it compares the two on purpose), and a
policy loss or token weight that takes ``rollout_logp`` itself (``decoupled_ppo``: its ``old_logp`` is
the proximal policy and ``rollout_logp`` the behaviour policy, two different inputs); an
engine that is not the learner's module (vLLM: its own kernels, its own log-prob mode); a
different dtype or autocast between sampling and training; top-p < 1 or any truncating or
re-weighting logits processor in the model's generation config (top-k, min-p, repetition penalty,
...: the engine's log-probs are then of another distribution); active dropout (the learner's forward
would not be the sampler's function); a loss that needs ``old_mean_logp`` (the forward runs anyway).
KL reference log-probs and critics are unaffected (always computed by their own forward).

Rollout workers (``runtime.mode=async`` or ``runtime.backend=ray``) are never reused, even with
``max_staleness = 0``: their engines run their own copy with their own thread counts, so reuse would
make ``old_logp`` depend on the worker's numerics. Consequently async with S = 0 reproduces sync
exactly only with ``trainer.old_logp=recompute`` (to the engine tolerance above otherwise).
"""

from __future__ import annotations

from rlvr.rollout.factory import DISTRIBUTION_KNOBS

#: Engines that sample on the learner's own module and return log_softmax(logits / T) of it.
SELF_LOGP_ENGINES = ("hf", "lean")

#: Generation-config fields that change the sampled distribution, with their neutral values.
_NEUTRAL = DISTRIBUTION_KNOBS


def generation_truncation(generation_config) -> str | None:
    """The first field of a transformers ``GenerationConfig`` that makes HF ``generate`` sample from
    something other than ``softmax(logits / T)`` (top-k, repetition penalty, ...), or None."""
    if generation_config is None:
        return None
    for name, neutral in _NEUTRAL.items():
        value = getattr(generation_config, name, None)
        if value not in neutral:
            return f"the model's generation_config sets {name}={value!r}"
    return None


def reuse_rollout_logp(*, setting: str, engine: str, decoupled: bool, staleness: int,
                       mismatch_method: str, top_p: float, engine_truncation: str | None,
                       model_dtype: str, rollout_dtype: str, autocast: str, dropout_active: bool,
                       row_versions: list[int], learner_version: int, needs_old_mean_logp: bool,
                       sample_temperature: float, train_temperature: float,
                       reads_rollout_logp: bool = False, top_k: int = 0,
                       logprob_support: str = "full") -> tuple[bool, str]:
    """``(reuse, reason)``: whether ``old_logp`` may be the engine's ``rollout_logp`` (see the module
    docstring for the tolerance this needs and why it is safe); ``reason`` says why not, or what held."""
    if setting == "rollout":
        return True, "trainer.old_logp = rollout (verl's bypass mode: old_logp is the behaviour policy's)"
    if setting != "auto":
        return False, f"trainer.old_logp = {setting}"
    if decoupled:
        return False, "rollout workers (runtime.mode=async or backend=ray) sample with their own engine copy"
    if staleness != 0:
        return False, (f"runtime.max_staleness = {staleness}: samples may be stale, old_logp is the learner's "
                       "proximal policy")
    if mismatch_method not in ("none",):
        return False, f"algorithm.mismatch.method = {mismatch_method} compares old_logp with rollout_logp"
    if reads_rollout_logp:
        return False, ("the policy loss or a token weight reads rollout_logp beside old_logp (decoupled PPO: "
                       "old_logp is the proximal policy, the learner's recompute)")
    if engine not in SELF_LOGP_ENGINES:
        return False, f"rollout.engine = {engine} is not the learner's module"
    if sample_temperature != train_temperature or not sample_temperature > 0:
        return False, f"sampling temperature {sample_temperature} != training temperature {train_temperature}"
    if (top_p < 1.0 or top_k > 0) and logprob_support != "sampled":  # the engine's log-probs are over its kept set
        what = f"rollout.top_p = {top_p}" if top_p < 1.0 else f"rollout.top_k = {top_k}"
        return False, f"{what} truncates the sampling distribution (trainer.logprob_support = full)"
    if engine_truncation is not None:
        return False, engine_truncation
    if rollout_dtype != model_dtype:
        return False, f"rollout dtype {rollout_dtype} != model dtype {model_dtype}"
    if autocast != "none":
        return False, f"trainer.autocast = {autocast} (the sampler runs without it)"
    if dropout_active:
        return False, "dropout is active in the learner's forward"
    if needs_old_mean_logp:
        return False, "the loss needs old_mean_logp (the forward runs anyway)"
    if not row_versions or any(v != learner_version for v in row_versions):
        stale = sorted({v for v in row_versions if v != learner_version})
        return False, f"rows from policy versions {stale[:3]} (learner at {learner_version})"
    return True, "the engine's log-probs are the current policy's own"
