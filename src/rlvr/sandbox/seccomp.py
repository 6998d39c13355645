"""The seccomp filter every sandboxed process runs under, built with ``pyseccomp``.

``pyseccomp`` (PyPI, a ctypes wrapper over the system's ``libseccomp.so.2``) builds the filter in the
trainer; its BPF program is handed to ``bwrap --seccomp FD``, which installs it in the sandbox right
before the program is executed (so bubblewrap's own setup is not filtered).

Default action: allow. Denied with EPERM: debugging other processes (``ptrace``,
``process_vm_readv/writev``), kernel attack surface a judged program never needs (``bpf``,
``perf_event_open``, ``userfaultfd``, ``io_uring_*``, the key ring), and every way to change the
namespace or mount layout (``mount``, ``umount2``, ``unshare``, ``setns``, ``pivot_root``,
``chroot``). ``socket`` of any family but ``AF_UNIX`` fails with EAFNOSUPPORT: no IP, netlink or
packet socket exists inside the sandbox. System calls made through a foreign ABI (32-bit
``int 0x80`` on x86_64) kill the process (libseccomp's default bad-architecture action).
The set follows the sandbox design note (``../shared/design/sandbox.md``, implication 1).
"""

from __future__ import annotations

import errno
import socket

__all__ = ["DENIED_SYSCALLS", "build_bpf", "seccomp_available"]

#: Calls that fail with EPERM inside the sandbox.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "open_by_handle_at",
    "name_to_handle_at", "kexec_load", "init_module", "finit_module", "delete_module", "swapon",
    "swapoff", "reboot", "acct", "quotactl",
)

_BPF: bytes | None = None


def build_bpf() -> bytes:
    """The filter as a BPF program (bytes for ``bwrap --seccomp``); built once per process.

    Raises:
        ImportError / OSError: ``pyseccomp`` or the system libseccomp is missing.
    """
    global _BPF
    if _BPF is None:
        import os

        import pyseccomp

        flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        for name in DENIED_SYSCALLS:
            try:
                flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
            except (ValueError, OSError):  # a call this architecture does not have
                continue
        flt.add_rule(pyseccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                     pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
        fd = os.memfd_create("rlvr-seccomp")
        try:
            with open(fd, "wb", closefd=False) as fh:
                flt.export_bpf(fh)
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        _BPF = b"".join(chunks)
    return _BPF


def seccomp_available() -> tuple[bool, str]:
    """``(True, "")`` when the filter can be built, else ``(False, why)``."""
    try:
        build_bpf()
    except Exception as err:  # noqa: BLE001 - any failure means: no filter
        return False, f"{type(err).__name__}: {err}"
    return True, ""
