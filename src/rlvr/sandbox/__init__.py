"""Sandboxed execution of untrusted (model-written) programs, and an I/O-test code verifier.

* :class:`Sandbox` / :class:`Limits` / :class:`Result`: run one program under bubblewrap after a real
  uid drop, with seccomp, cgroups and rlimits (:mod:`rlvr.sandbox.core`);
* :class:`CodeVerifier` / :class:`Verdict`: judge programs by ``[{input, output}]`` tests, in
  parallel worker slots (:mod:`rlvr.sandbox.verifier`);
* :data:`LANGUAGES`: languages as data (:mod:`rlvr.sandbox.languages`);
* :func:`rlvr.sandbox.hostile.run_suite`: the hostile-program suite behind ``rlvr sandbox check``.

See docs/sandbox.md.
"""

from rlvr.sandbox.core import (ALLOWED_ENV, STATUSES, Capabilities, Limits, Result, Sandbox, SandboxError,
                               SandboxUnavailableError, SandboxWarning, find_bwrap, probe)
from rlvr.sandbox.languages import LANGUAGES, Language, get_language, load_languages, register_language
from rlvr.sandbox.verifier import (MAX_CODE_BYTES, VERDICTS, CodeVerifier, Verdict, extract_program,
                                   normalise_output, outputs_match)

__all__ = [
    "ALLOWED_ENV", "LANGUAGES", "MAX_CODE_BYTES", "STATUSES", "VERDICTS", "Capabilities", "CodeVerifier",
    "Language", "Limits", "Result", "Sandbox", "SandboxError", "SandboxUnavailableError", "SandboxWarning",
    "Verdict", "extract_program", "find_bwrap", "get_language", "load_languages", "normalise_output",
    "outputs_match", "probe", "register_language",
]
