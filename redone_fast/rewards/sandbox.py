"""Run untrusted, model-generated Python in a sandbox.

``run_python(code, stdin=..., limits=...)`` executes ``code`` in a fresh Python interpreter and
returns a :class:`SandboxResult`; it never raises because of anything the program does. Generated
code is only ever run this way. ``isolation_report()`` says which isolation a run would get here;
``seccomp_filter()`` is the seccomp program the bubblewrap isolation loads.

Two isolations exist; which one runs is decided per call:

* **"bubblewrap"** (the default; needs the ``bwrap`` program, Debian/Ubuntu package ``bubblewrap``):
  the kernel confines the child. This is the security boundary. The child runs as uid 65534 in new
  user, pid, network, IPC, UTS, mount and cgroup namespaces, sees only the Python installation and the
  system libraries (read-only), a fresh ``/proc`` and a minimal ``/dev``, and writes only to its own
  tmpfs; a seccomp filter refuses process creation, mount, unshare/setns, ptrace, keyctl, bpf and the
  like; rlimits, a wall clock, a minimal environment, output caps and the audit hook come on top.
* **"weak"**: the child is an ordinary process confined by rlimits and an in-process audit hook,
  which is *not* a security boundary (memory corruption defeats it). Used only when bubblewrap is
  missing or unusable *and* the caller opted in, with ``SandboxLimits(allow_weak_isolation=True)`` or
  the environment variable ``REDONE_SANDBOX_ALLOW_WEAK=1``. Without the opt-in, ``run_python`` raises
  :class:`SandboxUnavailableError` (one line: why bubblewrap cannot be used and how to fix it) and
  runs nothing.

The audit hook (:mod:`redone_fast.rewards.sandbox_child`) refuses process creation and signals,
networking, native code and interpreter internals, and file access outside the working folder, with
``PermissionError`` and a ``[sandbox] blocked ...`` line on stderr. :class:`SandboxLimits` lists the
limits, :class:`SandboxResult` the outcomes. Every layer of both isolations, everything the hook
refuses, and the known gaps (a root trainer's child is exempt from ``RLIMIT_NPROC``; the weak isolation is
only as strong as CPython; written for CPython 3.11 and 3.12; the standard library only):
docs/design.md, "The code sandbox".
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailableError", "run_python",
           "isolation_report", "ALLOW_WEAK_ENV"]

log = logging.getLogger(__name__)

ALLOW_WEAK_ENV = "REDONE_SANDBOX_ALLOW_WEAK"  # "1": accept the weak isolation when bwrap is unusable
NOBODY_UID = 65534
_CHUNK = 1 << 16
_WATCHDOG_GRACE_S = 2.0  # the child ends itself this long after wall_s (if the parent could not)
_SETUP_ERROR_MARK = "[sandbox-setup-error]"
_BLOCKED_MARK = "[sandbox] blocked"
CHILD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
_CHILD_IN_JAIL = "/run/redone-sandbox/sandbox_child.py"
_INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or set "
                 f"{ALLOW_WEAK_ENV}=1 / SandboxLimits(allow_weak_isolation=True) to accept the weak "
                 "in-process isolation")


class SandboxUnavailableError(RuntimeError):
    """No isolation that the caller accepts is available: bubblewrap is missing or unusable and the
    weak isolation was not opted into. The message is one line saying why and what to do."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run (what each enforces: docs/design.md, "The code sandbox").

    ``allow_weak_isolation``: run with the weak in-process isolation when bubblewrap cannot be
    used (also enabled by ``REDONE_SANDBOX_ALLOW_WEAK=1``); otherwise such a run raises
    :class:`SandboxUnavailableError`. ``bwrap``: the bubblewrap program (default: ``bwrap`` on
    ``PATH``). ``network_namespace`` and ``drop_privileges`` only matter for the weak isolation:
    bubblewrap always unshares the network and runs the child as uid 65534.
    """

    cpu_s: float = 2.0  # CPU seconds (RLIMIT_CPU, rounded up to whole seconds)
    wall_s: float = 5.0  # wall-clock seconds, enforced by the parent
    memory_mb: int = 256  # address space (RLIMIT_AS)
    max_output_bytes: int = 65536  # per stream (stdout, stderr); more kills the program
    max_file_bytes: int = 1 << 20  # largest file the program may write (RLIMIT_FSIZE)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_processes: int = 16  # tasks (threads, the watchdog's included) where RLIMIT_NPROC is enforceable
    max_files: int = 64  # files/folders the program may create in its working folder
    network_namespace: bool = True  # weak isolation: use `unshare --user --net` when it works here
    drop_privileges: bool = True  # weak isolation: as root, run the child as uid 65534 if possible
    max_disk_bytes: int = 32 << 20  # bubblewrap: size of the working folder's tmpfs
    allow_weak_isolation: bool = False  # accept the weak isolation when bubblewrap is unusable
    seccomp: bool = True  # bubblewrap: load the seccomp filter where the architecture is known
    bwrap: str | None = None  # path of the bwrap program; None: look it up on PATH

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        for name in ("memory_mb", "max_output_bytes", "max_file_bytes", "max_open_files",
                     "max_processes", "max_files", "max_disk_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"SandboxLimits.{name} must be a positive int, got {value!r}")
        if self.max_processes < 2:
            raise ValueError("SandboxLimits.max_processes must be >= 2 (the program and its watchdog thread)")
        if self.max_open_files < 8:
            raise ValueError("SandboxLimits.max_open_files must be >= 8 (the interpreter needs a few)")
        if self.memory_mb < 32:
            raise ValueError("SandboxLimits.memory_mb must be >= 32 (the interpreter needs ~20 MiB)")
        if self.bwrap is not None and not isinstance(self.bwrap, str):
            raise ValueError(f"SandboxLimits.bwrap must be a path or None, got {self.bwrap!r}")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    ``returncode``: the exit status, negative signal number when killed by a signal,
    ``None`` when the sandbox itself failed. ``timed_out``: the wall-clock limit was hit.
    ``killed``: the program ended by a signal (from the parent or a CPU/file-size limit).
    ``reason``: ``None`` for a clean exit with status 0, else one of ``"exit_code"``
    (non-zero status), ``"blocked"`` (non-zero status after the sandbox refused an
    operation), ``"memory_limit"`` (non-zero status after a ``MemoryError``),
    ``"timeout"``, ``"cpu_limit"``, ``"output_limit"`` (output truncated to the cap),
    ``"file_size_limit"`` (a write beyond ``max_file_bytes`` failed with ``EFBIG``: Python
    ignores ``SIGXFSZ``), ``"disk_limit"`` (a write failed with ``ENOSPC``: the working folder's
    tmpfs is full), ``"signal:<NAME>"``, ``"sandbox_error"``. The ``"blocked"``,
    ``"memory_limit"``, ``"file_size_limit"`` and ``"disk_limit"`` exits are recognised from stderr,
    which the program controls: they are diagnostics, not verdicts.
    ``seconds``: wall-clock time of the run. ``isolation``: ``"bubblewrap"`` or ``"weak"``.
    """

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    killed: bool
    reason: str | None
    seconds: float
    isolation: str | None = None


# --------------------------------------------------------------------------------------
# Shared by both isolations
# --------------------------------------------------------------------------------------
def _child_env(workdir: str) -> dict[str, str]:
    """The whole environment the sandboxed program gets."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # glibc reserves 64 MiB of address space per malloc arena (one per thread): with
        # RLIMIT_AS, threads would run out of address space long before memory.
        "MALLOC_ARENA_MAX": "2",
    }
    if os.environ.get("LD_LIBRARY_PATH"):  # some Python builds need it to start
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def _child_args(workdir: str, limits: SandboxLimits, nproc: int) -> list[str]:
    """sandbox_child.py's arguments (see its parse_args)."""
    cpu_soft = _cpu_soft(limits)
    return [workdir, str(cpu_soft), str(cpu_soft + 1), str(limits.memory_mb << 20),
            str(limits.max_file_bytes), str(limits.max_open_files), str(nproc),
            str(limits.max_files), repr(limits.wall_s + _WATCHDOG_GRACE_S)]


def _cpu_soft(limits: SandboxLimits) -> int:
    return max(1, math.ceil(limits.cpu_s))


_INTERPRETER_FLAGS = ["-I", "-S", "-B", "-X", "utf8", "-X", "int_max_str_digits=0"]

_probe_lock = threading.Lock()


def _reset_probe_lock_in_child() -> None:  # a fork while another thread probes must not deadlock
    global _probe_lock
    _probe_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_probe_lock_in_child)


def _weak_allowed(limits: SandboxLimits) -> bool:
    """The caller accepts the weak isolation (the field, or REDONE_SANDBOX_ALLOW_WEAK=1/true/yes)."""
    env = os.environ.get(ALLOW_WEAK_ENV, "").strip().lower()
    return bool(limits.allow_weak_isolation or env in ("1", "true", "yes"))


# --------------------------------------------------------------------------------------
# bubblewrap
# --------------------------------------------------------------------------------------
# seccomp: syscalls answered with EPERM, by architecture (numbers from the kernel's unistd tables;
# tests/test_sandbox_attacks.py checks them against the system headers where those are installed).
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENIED_SYSCALLS = {
    "x86_64": {
        "fork": 57, "vfork": 58, "mknod": 133, "mknodat": 259, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250, "add_key": 248,
        "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "open_by_handle_at": 304, "name_to_handle_at": 303, "swapon": 167,
        "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179, "quotactl_fd": 443,
        "syslog": 103, "personality": 135, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "open_tree": 428, "move_mount": 429, "mount_setattr": 442, "iopl": 172, "ioperm": 173,
        "uselib": 134, "kcmp": 312, "pidfd_getfd": 438, "settimeofday": 164, "clock_settime": 227,
        "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170, "setdomainname": 171,
        "lookup_dcookie": 212,
    },
    "aarch64": {
        "mknodat": 33, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97,
        "setns": 268, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89,
        "quotactl": 60, "quotactl_fd": 443, "syslog": 116, "personality": 92,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428, "move_mount": 429,
        "mount_setattr": 442, "kcmp": 272, "pidfd_getfd": 438, "settimeofday": 170,
        "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171, "sethostname": 161,
        "setdomainname": 162, "lookup_dcookie": 18,
    },
}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435  # the same number on every architecture
_CLONE_THREAD = 0x00010000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_EPERM, _RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 38
_X32_BIT = 0x40000000


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The sandbox's seccomp program (a ``struct sock_filter`` array) for ``machine``
    (``os.uname().machine`` by default), or ``None`` for an architecture without a syscall table here.

    Layout: wrong ABI -> kill; each denied syscall -> EPERM; clone3 -> ENOSYS (glibc then uses
    clone); clone -> EPERM unless it makes a thread without new namespaces; anything else -> allow.
    """
    machine = machine or os.uname().machine
    if machine not in _AUDIT_ARCH:
        return None
    prog = [_bpf(_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
            _bpf(_BPF_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),
            _bpf(_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),
            _bpf(_BPF_LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
    if machine == "x86_64":  # the x32 ABI shares the architecture value: numbers with bit 30 set
        prog += [_bpf(_BPF_JGE_K, 0, 1, _X32_BIT), _bpf(_BPF_RET_K, 0, 0, _RET_KILL_PROCESS)]
    for nr in sorted(set(_DENIED_SYSCALLS[machine].values())):
        prog += [_bpf(_BPF_JEQ_K, 0, 1, nr), _bpf(_BPF_RET_K, 0, 0, _RET_EPERM)]
    prog += [_bpf(_BPF_JEQ_K, 0, 1, _CLONE3), _bpf(_BPF_RET_K, 0, 0, _RET_ENOSYS)]
    prog += [_bpf(_BPF_JEQ_K, 0, 5, _CLONE[machine]),
             _bpf(_BPF_LD_W_ABS, 0, 0, 16),  # low 32 bits of args[0] (the flags; little-endian)
             _bpf(_BPF_JSET_K, 2, 0, _CLONE_NAMESPACES),  # -> EPERM
             _bpf(_BPF_JSET_K, 0, 1, _CLONE_THREAD),  # thread -> allow, else -> EPERM
             _bpf(_BPF_RET_K, 0, 0, _RET_ALLOW),
             _bpf(_BPF_RET_K, 0, 0, _RET_EPERM)]
    prog.append(_bpf(_BPF_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(prog)


def _interpreter() -> str:
    """The real interpreter (a venv's python is a link to it; its venv is not needed with -I -S)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _is_within(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


_python_folders_cache: list[list[str]] = []


def _python_folders() -> list[str]:
    """Host folders of the Python installation the child needs, outermost only (cached).

    Asked of the interpreter itself, started as the child will be (``-I -S``): its prefixes and
    sys.path (the standard library, never the trainer's site-packages or working folder), plus
    the interpreter's own folder and LIBDIR (libpython).
    """
    if _python_folders_cache:
        return _python_folders_cache[0]
    interpreter = _interpreter()
    proc = subprocess.run([interpreter, "-I", "-S", "-c",
                           "import sys; print(sys.prefix, sys.exec_prefix, *sys.path, sep='\\n')"],
                          env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=30, check=True)
    candidates = proc.stdout.splitlines()
    candidates += [os.path.dirname(interpreter), sysconfig.get_config_var("LIBDIR") or ""]
    real = sorted({os.path.realpath(c) for c in candidates if c and os.path.isdir(c)}, key=len)
    folders: list[str] = []
    for path in real:
        if path != "/" and not _is_within(path, folders):
            folders.append(path)
    _python_folders_cache.append(folders)
    return folders


_SYSTEM_LIB_FOLDERS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/lib32", "/lib32")
# Host-global parts of procfs that a uid-0-mapped child could write (or has no use for).
_PROC_COVERS = ("sys", "pressure", "fs", "acpi", "driver", "scsi", "irq", "bus", "tty", "sysvipc")


def _mount_args(workdir: str, tmpfs_bytes: int) -> list[str]:
    """bwrap's file system options: read-only Python and system libraries, fresh /proc and /dev,
    the working folder's tmpfs, then the root remounted read-only."""
    args: list[str] = []
    for path in _SYSTEM_LIB_FOLDERS:
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for folder in _python_folders():
        args += ["--ro-bind", folder, folder]
    args += ["--ro-bind", CHILD_PATH, _CHILD_IN_JAIL]
    args += ["--proc", "/proc"]
    for name in _PROC_COVERS:
        if os.path.isdir(f"/proc/{name}"):
            args += ["--tmpfs", f"/proc/{name}", "--remount-ro", f"/proc/{name}"]
    args += ["--dev", "/dev", "--remount-ro", "/dev"]
    args += ["--size", str(tmpfs_bytes), "--perms", "0700", "--tmpfs", workdir]
    return args


def _namespace_args(disable_userns: bool) -> list[str]:
    args = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
    if disable_userns:
        args.append("--disable-userns")
    return args + ["--uid", str(NOBODY_UID), "--gid", str(NOBODY_UID), "--hostname", "sandbox"]


def _env_args(env: dict[str, str]) -> list[str]:
    args = ["--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def _bwrap_env() -> dict[str, str]:
    """bubblewrap's own environment: it is pid 1 in the sandbox, and /proc/1/environ is readable."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _sandbox_workdir() -> str:
    """A fresh path for the working folder inside the sandbox (nothing is created on the host).

    Named like a host temporary folder, so that the program sees an ordinary absolute path and
    processes can be told apart by it; /tmp when the temporary folder lies in a read-only bind.
    """
    base = os.path.realpath(tempfile.gettempdir())
    if _is_within(base, _python_folders() + list(_SYSTEM_LIB_FOLDERS)) or base == "/":
        base = "/tmp"
    return os.path.join(base, "rf-sandbox-" + secrets.token_hex(6))


@dataclass(frozen=True)
class _Jail:
    """How bubblewrap works on this machine (probed once, see _probe_bubblewrap)."""

    bwrap: str
    disable_userns: bool  # bwrap >= 0.8 and the kernel allow --disable-userns
    seccomp: bool  # the seccomp filter is loaded
    namespaces: tuple[str, ...]  # the namespaces the child does not share with the trainer
    uid: int  # the child's uid in its user namespace
    outer_uid: int  # what the host kernel sees (bubblewrap maps the child to its caller's uid)
    nproc: str  # "per-namespace", "host-count" or "exempt" (outer uid 0): how RLIMIT_NPROC counts


def _find_bwrap(limits: SandboxLimits) -> str | None:
    """The bwrap program to use, or None."""
    if limits.bwrap is not None:
        path = limits.bwrap
    else:
        path = shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


# Printed by the probe: the child's uid, whether a thread starts under RLIMIT_NPROC = 3 (pid 1,
# the probe and one thread: it does when the count is per namespace or the uid is exempt), its
# seccomp mode and its namespaces, to be compared with the trainer's.
_PROBE_CODE = """
import os, resource, _thread
print("uid", os.getuid())
resource.setrlimit(resource.RLIMIT_NPROC, (3, 3))
try:
    _thread.start_new_thread(lambda: None, ())
    print("nproc fresh")
except RuntimeError:
    print("nproc counted")
for line in open("/proc/self/status"):
    if line.startswith("Seccomp:"):
        print("seccomp", line.split()[1])
for name in ("user", "pid", "net", "ipc", "uts", "mnt", "cgroup"):
    print("ns", name, os.readlink("/proc/self/ns/" + name))
"""

_jail_cache: dict[tuple[str, bool], tuple[_Jail | None, str | None]] = {}


def _probe_run(bwrap: str, disable_userns: bool, seccomp: bytes | None) -> tuple[dict | None, str]:
    """Run the probe in a jail built this way: (what it printed, parsed) or (None, why not)."""
    workdir = _sandbox_workdir()
    argv = [bwrap, *_namespace_args(disable_userns), "--die-with-parent", "--new-session",
            *_env_args(_child_env(workdir)), *_mount_args(workdir, 1 << 20), "--remount-ro", "/",
            "--chdir", workdir]
    with tempfile.TemporaryFile() as filt:
        pass_fds: tuple[int, ...] = ()
        if seccomp is not None:
            filt.write(seccomp)
            filt.seek(0)
            argv += ["--seccomp", str(filt.fileno())]
            pass_fds = (filt.fileno(),)
        argv += [_interpreter(), "-I", "-S", "-B", "-c", _PROBE_CODE]
        try:
            proc = subprocess.run(argv, env=_bwrap_env(), stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=30, pass_fds=pass_fds, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"{bwrap} could not be run: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit status {proc.returncode}"]
        return None, f"{bwrap} does not work here: {lines[-1]}"
    facts: dict = {"ns": {}}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ns":
            facts["ns"][parts[1]] = parts[2]
        elif len(parts) == 2:
            facts[parts[0]] = parts[1]
    return facts, ""


def _own_namespaces(facts: dict) -> tuple[str, ...]:
    """The namespaces (in bubblewrap's words: mount, not mnt) the probe did not share with us."""
    names = []
    for name, link in facts["ns"].items():
        try:
            ours = os.readlink(f"/proc/self/ns/{name}")
        except OSError:
            continue
        if link != ours:
            names.append("mount" if name == "mnt" else name)
    return tuple(names)


def _probe_bubblewrap(limits: SandboxLimits) -> tuple[_Jail | None, str | None]:
    """(the jail, None) when bubblewrap works here, else (None, one line saying why); cached."""
    bwrap = _find_bwrap(limits)
    if bwrap is None:
        where = limits.bwrap or "bwrap on PATH"
        return None, f"bubblewrap not found ({where})"
    want_seccomp = limits.seccomp and seccomp_filter() is not None
    key = (bwrap, want_seccomp)
    with _probe_lock:
        if key in _jail_cache:
            return _jail_cache[key]
        # Strongest first: --disable-userns needs bwrap >= 0.8; seccomp needs a kernel with it.
        variants = [(True, want_seccomp), (False, want_seccomp)] + ([(False, False)] if want_seccomp else [])
        why = ""
        jail = None
        for disable_userns, use_seccomp in variants:
            try:
                facts, why = _probe_run(bwrap, disable_userns, seccomp_filter() if use_seccomp else None)
            except Exception as exc:  # e.g. the interpreter could not describe itself: no jail
                facts, why = None, f"bubblewrap probe failed: {exc!r}"
            if facts is None:
                continue
            outer = os.getuid()
            nproc = "exempt" if outer == 0 else ("per-namespace" if facts.get("nproc") == "fresh" else "host-count")
            jail = _Jail(bwrap=bwrap, disable_userns=disable_userns,
                         seccomp=use_seccomp and facts.get("seccomp") == "2",
                         namespaces=_own_namespaces(facts), uid=int(facts.get("uid", -1)),
                         outer_uid=outer, nproc=nproc)
            if "user" not in jail.namespaces or "pid" not in jail.namespaces or "net" not in jail.namespaces:
                jail, why = None, f"{bwrap} did not create the user, pid and network namespaces"
                continue
            break
        result = (jail, None) if jail is not None else (None, why)
        _jail_cache[key] = result
        log.debug("sandbox: bubblewrap probe %s -> %s", key, result)
        return result


def _jail_nproc(jail: _Jail, limits: SandboxLimits) -> int:
    """RLIMIT_NPROC for the child; 0 = not set (the kernel would not enforce it)."""
    if jail.nproc == "exempt":
        return 0
    if jail.nproc == "per-namespace":
        return limits.max_processes + 1  # bubblewrap's pid 1 counts too
    return _count_tasks(jail.outer_uid) + limits.max_processes + 1


def _bwrap_argv(jail: _Jail, limits: SandboxLimits, workdir: str, *, code_fd: int, status_fd: int,
                seccomp_fd: int | None, command: list[str]) -> list[str]:
    """The whole bubblewrap command line for one run (docs/design.md, "The code sandbox", layers 1-3)."""
    argv = [jail.bwrap, *_namespace_args(jail.disable_userns), "--die-with-parent", "--new-session",
            *_env_args(_child_env(workdir)), *_mount_args(workdir, limits.max_disk_bytes),
            "--perms", "0600", "--file", str(code_fd), workdir + "/main.py",
            "--remount-ro", "/", "--chdir", workdir, "--json-status-fd", str(status_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--", *command]


def _select_isolation(limits: SandboxLimits) -> tuple[str, _Jail | None]:
    """("bubblewrap", jail) or ("weak", None); raises SandboxUnavailableError when neither may run."""
    jail, why = _probe_bubblewrap(limits)
    if jail is not None:
        return "bubblewrap", jail
    if _weak_allowed(limits):
        _warn_weak_once(why or "")
        return "weak", None
    raise SandboxUnavailableError(f"cannot run generated code: {why}; {_INSTALL_HINT}")


_warned_weak: set[str] = set()


def _warn_weak_once(why: str) -> None:
    if why not in _warned_weak:
        _warned_weak.add(why)
        log.warning("sandbox: %s; running generated code under the WEAK in-process isolation "
                    "(opted in; the audit hook is not a security boundary)", why)


def isolation_report(limits: SandboxLimits | None = None) -> dict:
    """Which isolation a run with ``limits`` would get on this machine (probing once, cached).

    Keys: ``isolation`` ("bubblewrap", "weak", or "none": runs would raise
    :class:`SandboxUnavailableError`), ``reason`` (why not bubblewrap; None when it is used),
    ``bwrap`` (its path or None), ``namespaces`` (those the child does not share with the trainer,
    e.g. ``["user", "pid", "net", "ipc", "uts", "mount", "cgroup"]``), ``uid`` (the child's uid in its
    namespace), ``outer_uid`` (its uid to the host kernel), ``seccomp`` (the filter is loaded),
    ``nproc_limit`` (RLIMIT_NPROC is enforced), and, as before, ``running_as_root``,
    ``drop_privileges`` (the child is uid 65534) and ``network_namespace`` (it has no network).
    """
    limits = limits or SandboxLimits()
    root = os.geteuid() == 0
    jail, why = _probe_bubblewrap(limits)
    report = {"isolation": "none", "reason": why, "bwrap": _find_bwrap(limits), "namespaces": [],
              "uid": None, "outer_uid": None, "seccomp": False, "nproc_limit": False,
              "running_as_root": root, "drop_privileges": False, "network_namespace": False}
    if jail is not None:
        report.update(isolation="bubblewrap", reason=None, namespaces=list(jail.namespaces),
                      uid=jail.uid, outer_uid=jail.outer_uid, seccomp=jail.seccomp,
                      nproc_limit=jail.nproc != "exempt", drop_privileges=jail.uid == NOBODY_UID,
                      network_namespace="net" in jail.namespaces)
    elif _weak_allowed(limits):
        drop = bool(limits.drop_privileges and root and _probe(netns=False, drop=True))
        netns, per_ns = (_probe_details(netns=True, drop=drop) if limits.network_namespace else (False, False))
        uid = NOBODY_UID if drop else os.geteuid()
        report.update(isolation="weak", namespaces=["user", "net"] if netns else [],
                      uid=0 if netns else uid, outer_uid=uid,
                      nproc_limit=uid != 0, drop_privileges=drop, network_namespace=netns)
    return report


# --------------------------------------------------------------------------------------
# The weak isolation's optional OS layers (probed once per process, cached)
# --------------------------------------------------------------------------------------
# Writes "ok", plus " nproc" when a thread can still start under RLIMIT_NPROC = 4 (in a user
# namespace that means the count is per namespace, kernel >= 5.14, or the child is exempt).
_WEAK_PROBE_CODE = """
import resource, sys, _thread
result = "ok"
if sys.argv[1] == "nproc":
    resource.setrlimit(resource.RLIMIT_NPROC, (4, 4))
    try:
        _thread.start_new_thread(lambda: None, ())
        result += " nproc"
    except RuntimeError:
        pass
with open("probe.txt", "w") as f:
    f.write(result)
"""


def _unshare_argv() -> list[str] | None:
    exe = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None:
        return None
    return [exe, "--user", "--map-root-user", "--net"]


def _user_kwargs(drop: bool) -> dict:
    if not drop:
        return {}
    return {"user": NOBODY_UID, "group": NOBODY_UID, "extra_groups": []}


_probe_cache: dict[tuple[bool, bool], tuple[bool, bool]] = {}


def _probe(*, netns: bool, drop: bool) -> bool:
    """Whether a weak-isolation child started this way (namespace wrapper / uid drop) works here."""
    return _probe_details(netns=netns, drop=drop)[0]


def _probe_details(*, netns: bool, drop: bool) -> tuple[bool, bool]:
    """(works, RLIMIT_NPROC counts per user namespace) for weak children started this way; cached."""
    key = (netns, drop)
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
        ok = nproc_per_ns = False
        prefix: list[str] = []
        if netns:
            wrapper = _unshare_argv()
            prefix = wrapper if wrapper is not None else []
        if not netns or prefix:
            workdir = tempfile.mkdtemp(prefix="rf-sandbox-probe-")
            try:
                if drop:
                    os.chown(workdir, NOBODY_UID, NOBODY_UID)
                argv = prefix + [sys.executable, "-I", "-S", "-B", "-c", _WEAK_PROBE_CODE,
                                 "nproc" if netns else "-"]
                proc = subprocess.run(argv, cwd=workdir, env=_child_env(workdir), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
                                      start_new_session=True, **_user_kwargs(drop))
                with open(os.path.join(workdir, "probe.txt")) as f:
                    written = f.read().split()
                ok = proc.returncode == 0 and written[:1] == ["ok"]
                nproc_per_ns = ok and netns and "nproc" in written
            except (OSError, subprocess.SubprocessError, ValueError):
                ok = nproc_per_ns = False
            finally:
                _remove_tree(workdir)
        _probe_cache[key] = (ok, nproc_per_ns)
        log.debug("sandbox probe netns=%s drop=%s -> works=%s nproc_per_ns=%s", netns, drop, ok, nproc_per_ns)
        return ok, nproc_per_ns


def _count_tasks(uid: int) -> int:
    """Tasks (threads) whose real uid is ``uid``: what RLIMIT_NPROC counts outside a user ns."""
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                data = f.read()
        except OSError:
            continue
        real_uid = threads = None
        for line in data.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def _remove_tree(path: str) -> None:
    def fix_and_retry(_func, p, _exc):
        # The program may have made its own folders unreadable: give them back to us, without
        # following symlinks (there should be none; the program is dead by now).
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if stat.S_ISDIR(os.lstat(p).st_mode):
                os.chmod(p, stat.S_IRWXU)
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix_and_retry)
    else:
        shutil.rmtree(path, onerror=fix_and_retry)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("sandbox: could not remove working folder %s", path)


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _has_exited(pid: int) -> bool:
    try:  # WNOWAIT: leave it a zombie so its pid (= process group id) stays ours
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _pump(proc: subprocess.Popen, limits: SandboxLimits, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read stdout/stderr up to the cap until the child exits, the deadline passes or it overflows.

    Returns (stdout, stderr, parent_reason) with parent_reason "timeout"/"output_limit"/None.
    The child is dead (but not reaped) when this returns.
    """
    cap = limits.max_output_bytes
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    reason = None
    exited = False
    drain_until = None
    sel = selectors.DefaultSelector()
    pidfd = _pidfd(proc.pid)
    try:
        for fd in (out_fd, err_fd):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        open_streams = 2
        while True:
            now = time.monotonic()
            if not exited and _has_exited(proc.pid):
                exited = True
                _kill_group(proc.pid)  # leftovers in its process group, if any
                drain_until = now + 1.0
            if exited and open_streams == 0:
                break
            limit_at = drain_until if exited else deadline
            if now >= limit_at:
                if exited:
                    break  # something outside the group holds the pipes: give up on them
                reason = "timeout"
                _kill_group(proc.pid)
                exited = True
                drain_until = now + 0.5
                continue
            timeout = limit_at - now
            if pidfd is None and not exited:
                timeout = min(timeout, 0.02)
            for key, _ in sel.select(timeout):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = None
                    continue
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    open_streams -= 1
                    continue
                buf = bufs[fd]
                room = cap - len(buf)
                if len(chunk) > room:
                    buf += chunk[:max(room, 0)]
                    if reason is None and not exited:
                        reason = "output_limit"
                        _kill_group(proc.pid)
                        exited = True
                        drain_until = time.monotonic() + 0.5
                else:
                    buf += chunk
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    if not exited:  # pragma: no cover - defensive
        _kill_group(proc.pid)
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), reason



# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------
def run_python(code: str, *, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` (Python source) in the sandbox, feeding ``stdin``; see the module docstring.

    Never raises because of the program. Raises :class:`SandboxUnavailableError` (before running
    anything) when bubblewrap cannot be used and the weak isolation was not opted into; TypeError
    for a non-str ``code``/``stdin``.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be str, not {type(code).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"stdin must be str, not {type(stdin).__name__}")
    limits = limits or SandboxLimits()
    isolation, jail = _select_isolation(limits)
    start = time.monotonic()
    try:
        if jail is not None:
            return _run_bubblewrap(code, stdin, limits, jail, start)
        return _run_weak(code, stdin, limits, start)
    except Exception as exc:  # the sandbox's own failure (e.g. no fds left), never the program's
        log.warning("sandbox: run failed: %r", exc)
        return SandboxResult("", f"sandbox error: {exc!r}", None, False, False, "sandbox_error",
                             time.monotonic() - start, isolation)


def _data_file(data: bytes, mode: int = 0o600):
    """An unlinked temporary file holding ``data``, positioned at its start (for fds to pass on)."""
    f = tempfile.TemporaryFile()
    try:
        f.write(data)
        f.seek(0)
        os.fchmod(f.fileno(), mode)
    except BaseException:
        f.close()
        raise
    return f


def _supervise(proc: subprocess.Popen, limits: SandboxLimits, deadline: float):
    """Pump the child's output until it ends (or is killed), then reap it.

    Returns (stdout, stderr, parent_reason, returncode or None, CPU seconds used). Whatever
    happens, the child is dead and reaped and its pipes are closed when this returns or raises.
    """
    try:
        out, err, parent_reason = _pump(proc, limits, deadline)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
            cpu_used = usage.ru_utime + usage.ru_stime
        except ChildProcessError:  # someone else reaped it
            returncode, cpu_used = None, 0.0
        proc.returncode = returncode if returncode is not None else -signal.SIGKILL
        return out, err, parent_reason, returncode, cpu_used
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc.returncode is None:  # an exception before reaping: make sure it is gone
            _kill_group(proc.pid)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass


def _read_available(fd: int) -> bytes:
    """What a pipe holds now (its writers are gone or never write again), without blocking."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _from_bwrap_status(returncode: int | None) -> int | None:
    """bubblewrap exits with 128+N when the program died of signal N: report that as -N."""
    if returncode is not None and 128 < returncode < 128 + signal.NSIG:
        return -(returncode - 128)
    return returncode


def _run_bubblewrap(code: str, stdin: str, limits: SandboxLimits, jail: _Jail, start: float) -> SandboxResult:
    """One run in the jail. The program, stdin and the seccomp filter travel as unlinked files'
    fds (bubblewrap copies the program into the tmpfs and closes them all before the child starts);
    --json-status-fd tells a bubblewrap setup failure (no "child-pid") from the program's own exit."""
    workdir = _sandbox_workdir()
    command = [_interpreter(), *_INTERPRETER_FLAGS, _CHILD_IN_JAIL,
               *_child_args(workdir, limits, _jail_nproc(jail, limits))]
    files = []
    status_r = status_w = -1
    try:
        code_file = _data_file(code.encode("utf-8", errors="surrogatepass"))
        files.append(code_file)
        stdin_file = _data_file(stdin.encode("utf-8", errors="surrogatepass"))
        files.append(stdin_file)
        seccomp_fd = None
        if jail.seccomp:
            seccomp_file = _data_file(seccomp_filter() or b"")
            files.append(seccomp_file)
            seccomp_fd = seccomp_file.fileno()
        status_r, status_w = os.pipe()
        argv = _bwrap_argv(jail, limits, workdir, code_fd=code_file.fileno(), status_fd=status_w,
                           seccomp_fd=seccomp_fd, command=command)
        pass_fds = tuple(fd for fd in (code_file.fileno(), seccomp_fd, status_w) if fd is not None)
        deadline = time.monotonic() + limits.wall_s
        proc = subprocess.Popen(argv, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_bwrap_env(), close_fds=True, pass_fds=pass_fds,
                                start_new_session=True)
        os.close(status_w)
        status_w = -1
        out, err, parent_reason, returncode, cpu_used = _supervise(proc, limits, deadline)
        started = b'"child-pid"' in _read_available(status_r)
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        for f in files:
            f.close()
    if not started and parent_reason is None:  # bubblewrap failed before starting the program
        returncode = None
    else:
        returncode = _from_bwrap_status(returncode)
    return _classify(out, err, returncode, parent_reason, cpu_used, _cpu_soft(limits),
                     time.monotonic() - start, "bubblewrap")


_child_source_cache: list[str] = []


def _child_source() -> str:
    """sandbox_child.py's source, for ``python -c`` (uid 65534 may not be able to read the file)."""
    if not _child_source_cache:
        with open(CHILD_PATH, encoding="utf-8") as f:
            _child_source_cache.append(f.read())
    return _child_source_cache[0]


def _run_weak(code: str, stdin: str, limits: SandboxLimits, start: float) -> SandboxResult:
    """One run under the weak isolation: a host working folder, the optional unshare/uid layers."""
    euid = os.geteuid()
    drop = bool(limits.drop_privileges and euid == 0 and _probe(netns=False, drop=True))
    netns, nproc_per_ns = (_probe_details(netns=True, drop=drop) if limits.network_namespace
                           else (False, False))
    if netns and nproc_per_ns:
        nproc = limits.max_processes  # counted per user namespace: a fresh count
    elif drop or euid != 0:
        nproc = _count_tasks(NOBODY_UID if drop else os.getuid()) + limits.max_processes
    else:
        nproc = 0  # real root is exempt from RLIMIT_NPROC: not set

    workdir = os.path.realpath(tempfile.mkdtemp(prefix="rf-sandbox-"))
    stdin_file = None
    try:
        main_path = os.path.join(workdir, "main.py")
        with open(main_path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(code)
        if drop:
            os.chown(workdir, NOBODY_UID, NOBODY_UID)
            os.chown(main_path, NOBODY_UID, NOBODY_UID)
        # 0644 so that /dev/stdin can be reopened by uid 65534.
        stdin_file = _data_file(stdin.encode("utf-8", errors="surrogatepass"), 0o644)
        argv = (_unshare_argv() or []) if netns else []
        argv += [sys.executable, *_INTERPRETER_FLAGS, "-c", _child_source(),
                 *_child_args(workdir, limits, nproc)]
        deadline = time.monotonic() + limits.wall_s
        proc = subprocess.Popen(
            argv, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
            env=_child_env(workdir), close_fds=True, start_new_session=True, umask=0o077,
            **_user_kwargs(drop),
        )
        out, err, parent_reason, returncode, cpu_used = _supervise(proc, limits, deadline)
    finally:
        if stdin_file is not None:
            stdin_file.close()
        _remove_tree(workdir)
    return _classify(out, err, returncode, parent_reason, cpu_used, _cpu_soft(limits),
                     time.monotonic() - start, "weak")


def _classify(out: bytes, err: bytes, returncode: int | None, parent_reason: str | None,
              cpu_used: float, cpu_soft: int, seconds: float, isolation: str) -> SandboxResult:
    """The SandboxResult for what was observed (see SandboxResult.reason for the vocabulary)."""
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    last_line = stderr.rstrip().rsplit("\n", 1)[-1]
    timed_out = parent_reason == "timeout"
    killed = parent_reason is not None or (returncode is not None and returncode < 0)
    if parent_reason is not None:
        reason = parent_reason
    elif returncode is None:
        reason = "sandbox_error"
    elif returncode < 0:
        signum = -returncode
        if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_used >= cpu_soft - 0.05):
            reason = "cpu_limit"
        elif signum == signal.SIGXFSZ:
            reason = "file_size_limit"
        else:
            reason = "signal:" + _signal_name(signum)
    elif returncode == 0:
        reason = None
    elif returncode == 125 and _SETUP_ERROR_MARK in stderr:
        reason = "sandbox_error"
    elif _BLOCKED_MARK in stderr:
        reason = "blocked"
    elif last_line.startswith("MemoryError"):
        reason = "memory_limit"
    elif "[Errno 27]" in last_line:  # EFBIG: Python ignores SIGXFSZ, the write fails instead
        reason = "file_size_limit"
    elif "[Errno 28]" in last_line:  # ENOSPC: the working folder's tmpfs is full
        reason = "disk_limit"
    else:
        reason = "exit_code"
    return SandboxResult(stdout, stderr, returncode, timed_out, killed, reason, seconds, isolation)
