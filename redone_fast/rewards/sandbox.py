"""Run untrusted, model-generated Python in a sandbox.

``run_python(code, stdin=..., limits=...)`` executes ``code`` in a fresh Python
interpreter and returns a :class:`SandboxResult`; it never raises because of
anything the program does. Generated code is only ever run this way.

Layers, outermost first (each one stands on its own; none needs root):

1. **Separate process.** A new interpreter (``sys.executable -I -S -B -X utf8
   -X int_max_str_digits=0``) in its own session / process group, with every
   parent file descriptor closed (``close_fds``). ``-I`` ignores ``PYTHON*``
   variables, the user site directory and the script's folder; ``-S`` skips
   ``site``, so ``site-packages`` (and its ``.pth`` files) are never on the path:
   only the standard library is importable. On wall-clock timeout, output overflow
   and also after a normal exit, the whole process group is ``SIGKILL``-ed, then
   the child is reaped by the parent (no PID-reuse race).
2. **Resource limits** (``setrlimit`` in the child, soft = hard so they cannot be
   raised again, before any user code runs): ``RLIMIT_CPU`` (``cpu_s`` rounded up
   to whole seconds; ``SIGXCPU`` then ``SIGKILL`` one second later),
   ``RLIMIT_AS`` (``memory_mb`` of address space: big allocations fail with
   ``MemoryError``), ``RLIMIT_FSIZE`` (``max_file_bytes`` per written file),
   ``RLIMIT_NOFILE``, ``RLIMIT_CORE = 0`` and ``RLIMIT_NPROC`` where the kernel
   enforces it for the child: ``max_processes`` tasks (threads included) in its
   own user namespace when the kernel counts per namespace (Linux >= 5.14,
   probed), else, for a non-root uid, the uid's current task count (read from
   ``/proc``) + ``max_processes``. A real-root child is exempt from
   ``RLIMIT_NPROC`` (kernel rule); there process creation is stopped by layer 7
   only.
3. **Wall clock**: ``wall_s`` measured by the parent, which kills the group. As a
   backstop for a parent that dies or is killed first (the child is in its own
   session, so nothing else would end, say, a sleeping program), a watchdog thread
   started in the child before the user code ends the process 2 s
   (``_WATCHDOG_GRACE_S``) after ``wall_s``. It counts as one of ``max_processes``.
4. **Throwaway working folder**: a fresh ``mkdtemp`` folder (mode 0700) is the
   cwd, ``HOME`` and ``TMPDIR``; the program is ``main.py`` inside it; the parent
   deletes the folder afterwards whatever the program did (a parent killed
   mid-run leaves it behind).
5. **Minimal environment**: only ``PATH=/usr/bin:/bin``, ``HOME``, ``TMPDIR``,
   ``LANG``/``LC_ALL=C.UTF-8``, ``MALLOC_ARENA_MAX=2`` (so that each thread does
   not reserve a 64 MiB malloc arena under ``RLIMIT_AS``) and ``LD_LIBRARY_PATH``
   when the parent has one (some Python builds need it to start); nothing else
   of the parent's environment (tokens, keys, ...) is passed on. stdin is an
   unlinked temporary file holding ``stdin``.
6. **Optional OS isolation, detected at run time** (probed once per process by
   running a tiny program the same way, cached):

   * *Network namespace*: when ``unshare --user --map-root-user --net`` works
     (util-linux present, unprivileged user namespaces allowed), the child runs
     in a new user + network namespace with only a down loopback: no network at
     all, whatever the code does. Otherwise only layer 7 blocks the network.
   * *Unprivileged uid*: when the parent runs as root, the child runs as uid/gid
     65534 ("nobody", no supplementary groups) if the interpreter is usable by
     that uid (it is not when Python lives under a 0700 ``/root``). Then file
     permissions protect root's files, it cannot signal root's processes and
     ``RLIMIT_NPROC`` applies.
7. **Audit hook** (``sys.addaudithook``, installed in the child before the user
   code is compiled; Python offers no way to remove one). It raises
   ``PermissionError`` (``ModuleNotFoundError`` for imports) and writes a
   ``[sandbox] blocked ...`` line to stderr for:

   * process creation and signals: ``os.system``, ``os.exec*``, ``os.fork``,
     ``os.forkpty``, ``os.posix_spawn*``, ``subprocess.Popen``, ``os.kill``,
     ``os.killpg``. Functions without an audit event are taken away before the
     user code runs: ``_posixsubprocess.fork_exec`` becomes a refusing stub,
     ``os.pidfd_open``, ``signal.pidfd_send_signal``, ``os.setpriority`` and
     ``os.sched_set*`` are deleted; so that they cannot be brought back, every
     allowed builtin module is imported up front and ``_imp.create_builtin``
     (which re-creates builtin modules without an audit event) is replaced by a
     refusal;
   * networking: every ``socket.*`` event (connect, bind, sendto, name
     resolution, creation of any socket but an ``AF_UNIX`` one, ...) and the
     ``urllib``/``http``/``ftplib``/``smtplib``/... events. Unconnected
     ``AF_UNIX`` sockets (``socketpair``, asyncio's self-pipe) are allowed;
   * native code and interpreter internals: importing ``ctypes``/``_ctypes``,
     ``_posixsubprocess``, ``_xxsubinterpreters`` (a sub-interpreter would have
     no hook), ``_test*``/``xx*`` modules, ``_sqlite3``, ``_dbm``/``_gdbm``,
     ``readline``, ``_ssl``, ``_multiprocessing``, ``_posixshmem``, ``syslog``,
     ``pwd``/``grp``/``spwd``, ``_tkinter``, re-importing ``posix``/``_signal``;
     loading any extension module from outside the standard library folder;
     ``code.__new__`` / ``code.replace`` (hand-made bytecode; only ``types.coroutine``'s
     flag change is let through),
     ``marshal.loads`` except from the import system's own bytecode loader,
     ``sys.addaudithook``, ``sys.settrace``/``sys.setprofile``,
     ``gc.get_objects``/``get_referrers``/``get_referents``,
     ``resource.setrlimit``/``prlimit``, ``ctypes.*`` events;
   * files: opening for writing, creating (``mkdir``), removing, renaming,
     ``chmod``/``chown``/``utime``/``truncate``/xattrs outside the working folder;
     reading or listing outside the working folder except the standard library
     folders (``sys.path`` of the child, ``site-packages`` excluded) and
     ``/dev/null``, ``/dev/zero``, ``/dev/urandom``, ``/dev/random``,
     ``/dev/std{in,out,err}``; opening anything but regular files (devices,
     FIFOs) or directories outside the folder; all ``os.symlink``/``os.link``;
     ``os.chdir`` anywhere but the working folder; more than ``max_files``
     newly created files/folders. Paths are resolved like the kernel does
     (``..`` and symlinks via ``lstat``/``readlink``), relative to the working
     folder; only exact ``str``/``bytes`` (or subclasses, read through their
     underlying data) and integer file descriptors are accepted as paths, so
     ``open(pathlib.Path(...))`` is refused (use ``str(path)``): an arbitrary
     ``__fspath__`` could answer differently to the hook and to the ``open``.

   The hook is written so that the program cannot change its decisions: it looks
   up no global or builtin names at run time (everything it uses is bound in its
   closure at install time and is immutable: ``str``, tuples, frozensets,
   builtin functions, a monotonic ``itertools.count``), calls nothing the program
   can override (exact type checks, ``str.__str__``/``bytes.decode`` on
   subclasses), and the hook function itself is referenced from nowhere the
   program can reach (``gc`` introspection and tracing are blocked).

8. **Parent side**: stdout and stderr are each read up to ``max_output_bytes``
   (the rest is never buffered: the program is killed, ``reason =
   "output_limit"``), so a flood of output cannot exhaust the parent's memory.
   (A program that retries a refused operation in a loop floods stderr with
   ``[sandbox] blocked`` lines and is stopped this way.)

What remains (known gaps; an audit hook is *not* a security boundary):

* The audit hook runs in the attacked process. Memory corruption defeats it:
  crafted bytecode fed through the import system's internals to
  ``marshal.loads`` (e.g. calling ``importlib._bootstrap_external``'s private
  loader functions with forged data), or a CPython crash bug. Without a user or
  network namespace, such code has the uid's full rights: network (unless the
  namespace layer is active), files the uid can read/write, and it could signal
  processes of the same uid, including the parent.
* ``os.stat``/``lstat``/``access``/``readlink`` have no audit event: the program
  can probe which paths exist anywhere and read symlink targets (e.g.
  ``/proc/self/ns/net``), not file contents. libc reads some files by itself
  (``/etc/localtime``).
* Races: another thread of the program can swap a path component between the
  hook's check and the real ``open`` (inside the folder only renames of the
  program's own files are possible, symlinks cannot be created).
* Disk usage is only bounded by ``max_files`` x ``max_file_bytes`` (no quota);
  ``RLIMIT_CPU`` has one-second granularity; ``RLIMIT_AS`` counts address
  space, not RSS. Processes that escaped the process group (impossible without
  ``fork``) would not be killed. Without the namespace layer nothing but the hook
  stops the network.
* On Python >= 3.13, ``frame.f_locals`` writes through to live frames (PEP 667):
  a finaliser that runs while the hook is active could rewrite the hook's
  variables for that call. Written for and tested on CPython 3.11 (audit events
  are version-specific; 3.10 and 3.12 are expected to behave the same).
* The stdlib only: ``numpy`` & co. are not importable (``-S``, and
  ``site-packages`` is unreadable to the program).
* No seccomp filter, cgroup, chroot or mount namespace is used (none is
  guaranteed to be available without root).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

__all__ = ["SandboxLimits", "SandboxResult", "run_python", "isolation_report"]

log = logging.getLogger(__name__)

NOBODY_UID = 65534
_CHUNK = 1 << 16
_WATCHDOG_GRACE_S = 2.0  # the child ends itself this long after wall_s (if the parent could not)
_SETUP_ERROR_MARK = "[sandbox-setup-error]"
_BLOCKED_MARK = "[sandbox] blocked"


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run (see the module docstring for what each enforces)."""

    cpu_s: float = 2.0  # CPU seconds (RLIMIT_CPU, rounded up to whole seconds)
    wall_s: float = 5.0  # wall-clock seconds, enforced by the parent
    memory_mb: int = 256  # address space (RLIMIT_AS)
    max_output_bytes: int = 65536  # per stream (stdout, stderr); more kills the program
    max_file_bytes: int = 1 << 20  # largest file the program may write (RLIMIT_FSIZE)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_processes: int = 16  # tasks (threads, the watchdog's included) where RLIMIT_NPROC is enforceable
    max_files: int = 64  # files/folders the program may create in its working folder
    network_namespace: bool = True  # use `unshare --user --net` when it works here
    drop_privileges: bool = True  # when running as root, run the child as uid 65534 if possible

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        for name in ("memory_mb", "max_output_bytes", "max_file_bytes", "max_open_files",
                     "max_processes", "max_files"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"SandboxLimits.{name} must be a positive int, got {value!r}")
        if self.max_processes < 2:
            raise ValueError("SandboxLimits.max_processes must be >= 2 (the program and its watchdog thread)")
        if self.max_open_files < 8:
            raise ValueError("SandboxLimits.max_open_files must be >= 8 (the interpreter needs a few)")
        if self.memory_mb < 32:
            raise ValueError("SandboxLimits.memory_mb must be >= 32 (the interpreter needs ~20 MiB)")


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
    ignores ``SIGXFSZ``), ``"signal:<NAME>"``, ``"sandbox_error"``. The ``"blocked"``,
    ``"memory_limit"`` and ``"file_size_limit"`` exits are recognised from stderr, which the
    program controls: they are diagnostics, not verdicts.
    ``seconds``: wall-clock time of the run.
    """

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    killed: bool
    reason: str | None
    seconds: float


# --------------------------------------------------------------------------------------
# Child side: this function's source is sent to the child interpreter with ``-c``. It must
# be self-contained (imports inside, no module globals): it runs under ``python -I -S``.
# --------------------------------------------------------------------------------------
def _child_main():  # pragma: no cover - runs in the sandboxed interpreter
    import builtins
    import itertools
    import posix
    import resource
    import sys

    argv = sys.argv
    workdir = argv[1]
    cpu_soft, cpu_hard, mem, fsize, nofile, nproc, max_files = [int(x) for x in argv[2:9]]
    watchdog_s = float(argv[9])

    def set_limit(which, soft, hard):
        cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))

    try:
        set_limit(resource.RLIMIT_CORE, 0, 0)
        set_limit(resource.RLIMIT_CPU, cpu_soft, cpu_hard)
        set_limit(resource.RLIMIT_AS, mem, mem)
        set_limit(resource.RLIMIT_FSIZE, fsize, fsize)
        set_limit(resource.RLIMIT_NOFILE, nofile, nofile)
        if nproc > 0:
            set_limit(resource.RLIMIT_NPROC, nproc, nproc)
    except (OSError, ValueError) as exc:
        posix.write(2, ("[sandbox-setup-error] setrlimit: %r\n" % (exc,)).encode())
        posix._exit(125)

    # Wall-clock limit that holds even if the parent dies (killed, interrupted): the program is
    # in its own session, so nothing else would stop a sleeping one. A small-stack thread.
    import _thread
    import time

    def watchdog(sleep=time.sleep, exit_=posix._exit, seconds=watchdog_s):
        sleep(seconds)
        exit_(137)

    _thread.stack_size(1 << 18)
    _thread.start_new_thread(watchdog, ())
    _thread.stack_size(0)

    import _imp
    import _signal
    import os

    import _frozen_importlib_external as bootstrap_external

    blocked_modules = frozenset((
        "ctypes", "_ctypes", "_posixsubprocess", "posix", "_signal", "_imp", "_sqlite3", "sqlite3",
        "_dbm", "_gdbm", "readline", "_ssl", "_multiprocessing", "_posixshmem", "syslog",
        "_tkinter", "pwd", "grp", "spwd", "nis", "ossaudiodev", "_xxsubinterpreters",
        "_xxinterpchannels", "_interpreters", "_interpchannels", "_interpqueues",
    ))
    blocked_module_prefix = ("_test", "_xx", "xx", "_ctypes")

    # Process creation without an audit event: replace it before the user code runs (a stub,
    # not a deletion, so that `import subprocess` still works).
    def fork_exec(*args, **kwargs):
        raise PermissionError("[sandbox] blocked _posixsubprocess.fork_exec")

    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = fork_exec
    except ImportError:
        pass
    # Acting on other processes without an audit event (signals through a pidfd, scheduling).
    for name in ("pidfd_open", "setpriority", "sched_setaffinity", "sched_setscheduler",
                 "sched_setparam"):
        posix.__dict__.pop(name, None)
        os.__dict__.pop(name, None)
    _signal.__dict__.pop("pidfd_send_signal", None)

    # `_imp.create_builtin` makes a fresh copy of a builtin module (e.g. `posix` with the
    # functions removed above, or `_posixsubprocess` where it is builtin) without an audit
    # event. Import every allowed builtin module now, then replace it with a refusal.
    for name in sys.builtin_module_names:
        if (name not in sys.modules and name not in blocked_modules
                and not name.startswith(blocked_module_prefix)):
            try:
                __import__(name)
            except Exception:
                pass

    def create_builtin(spec):
        raise ModuleNotFoundError("[sandbox] blocked _imp.create_builtin")

    _imp.create_builtin = create_builtin

    realpath = os.path.realpath
    workdir = realpath(workdir)
    prefixes = []
    for entry in sys.path:
        if isinstance(entry, str) and entry.startswith("/"):
            real = realpath(entry)
            if real != "/" and real not in prefixes:
                prefixes.append(real)
    excluded = [p + "/" + d for p in prefixes for d in ("site-packages", "dist-packages")]
    try:
        marshal_callers = (bootstrap_external._compile_bytecode.__code__,
                           bootstrap_external.SourceLoader.get_code.__code__)
    except AttributeError:  # a future CPython: keep imports from .pyc working
        marshal_callers = ()
    import types
    # types.coroutine (used by asyncio) only adds a flag to a compiled function's code object.
    code_new_callers = (types.coroutine.__code__,)
    main_path = workdir + "/main.py"
    with open(main_path, "rb") as f:
        source = f.read()

    def make_hook(workdir, prefixes, excluded, max_files, marshal_callers, code_new_callers,
                  blocked_modules, blocked_module_prefix):
        # Everything the hook uses is bound here, as immutable objects; the hook itself
        # looks up no global or builtin name (tests check its bytecode).
        type_, str_, bytes_, int_, issubclass_, len_ = type, str, bytes, int, issubclass, len
        next_ = next
        sstr, bdecode, sencode = str.__str__, bytes.decode, str.encode
        deny_exc, import_exc, oserror = PermissionError, ModuleNotFoundError, OSError
        lstat, readlink, write, getframe = posix.lstat, posix.readlink, posix.write, sys._getframe
        created = itertools.count()  # monotonic: reaching it can only make it stricter
        wd_slash = workdir + "/"
        ro = tuple((p, p + "/") for p in prefixes)
        ex = tuple((p, p + "/") for p in excluded)
        writing = posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
        fmt, lnk, reg, dirt = 0o170000, 0o120000, 0o100000, 0o040000
        special = frozenset(("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/fd/0",
                             "/dev/fd/1", "/dev/fd/2", "/proc/self/fd/0", "/proc/self/fd/1",
                             "/proc/self/fd/2"))
        safe_read = frozenset(("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"))
        safe_write = frozenset(("/dev/null",))
        deny = frozenset((
            "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
            "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "os.link", "os.symlink",
            "sys.addaudithook", "sys.settrace", "sys.setprofile", "gc.get_objects",
            "gc.get_referrers", "gc.get_referents", "resource.setrlimit",
            "resource.prlimit", "os.startfile", "webbrowser.open", "sys.remote_exec",
            "_posixsubprocess.fork_exec", "sys.monitoring.register_callback",
        ))
        deny_prefix = ("socket.", "ctypes.", "urllib.", "http.", "ftplib.", "smtplib.",
                       "imaplib.", "poplib.", "nntplib.", "telnetlib.", "sqlite3.", "dbm.",
                       "syslog.", "winreg.", "msvcrt.")
        list_events = frozenset(("os.listdir", "os.scandir", "os.getxattr", "os.listxattr"))
        modify_events = frozenset(("os.remove", "os.rmdir", "os.truncate", "os.chmod",
                                   "os.chown", "os.utime", "os.setxattr", "os.removexattr"))
        marshal_events = frozenset(("marshal.loads", "marshal.load"))

        def hook(event, args):
            if type_(event) is not str_:
                return  # only sys.audit() from the program itself can pass anything else
            checks = ()
            bad = None
            blocked_import = False
            if event == "open":
                flags = args[2] if len_(args) > 2 else None
                if type_(flags) is not int_:
                    flags = 1  # unknown: treat as a write
                mode = "w" if (flags & 3) != 0 or (flags & writing) != 0 else "r"
                checks = ((args[0], mode),)
            elif event == "import":
                name = args[0]
                if type_(name) is not str_:
                    name = sstr(name)
                for part in name.split("."):
                    if part in blocked_modules or part.startswith(blocked_module_prefix):
                        bad = name
                        blocked_import = True
                        break
                if bad is None and len_(args) > 1 and args[1] is not None:
                    checks = ((args[1], "e"),)  # an extension module's file
            elif event in list_events:
                checks = ((args[0], "l"),)
            elif event in modify_events:
                checks = ((args[0], "x"),)
            elif event == "os.rename":
                checks = ((args[0], "x"), (args[1], "x"))
            elif event == "os.mkdir":
                checks = ((args[0], "c"),)
            elif event == "os.chdir":
                checks = ((args[0], "d"),)
            elif event in marshal_events:
                if marshal_callers:
                    ok = False
                    frame = getframe(1)
                    if frame.f_code is marshal_callers[0]:
                        back = frame.f_back
                        ok = back is not None and back.f_code is marshal_callers[1]
                    if not ok:
                        bad = "marshal outside the import system"
            elif event == "code.__new__":
                if getframe(1).f_code is not code_new_callers[0]:
                    bad = "hand-made code object"
            elif event == "socket.__new__" and len_(args) > 1 and type_(args[1]) is int_ and args[1] == 1:
                return  # AF_UNIX sockets (asyncio's self-pipe, socketpair); connect/bind are refused
            elif event in deny or event.startswith(deny_prefix):
                bad = ""
            else:
                return

            for path, mode in checks:
                if bad is not None:
                    break
                if path is None:
                    s = workdir  # os.listdir() / os.scandir() of the cwd
                else:
                    t = type_(path)
                    if t is str_:
                        s = path
                    elif t is bytes_:
                        s = bdecode(path, "utf-8", "surrogateescape")
                    elif issubclass_(t, int_):
                        if mode == "d" or mode == "e":
                            bad = "file descriptor"
                        continue  # an fd the program already opened through this hook
                    elif issubclass_(t, str_):
                        s = sstr(path)
                    elif issubclass_(t, bytes_):
                        s = bdecode(path, "utf-8", "surrogateescape")
                    else:
                        bad = "path object (pass a str)"
                        continue
                if (mode == "r" or mode == "w") and s in special:
                    continue
                # Resolve like the kernel: relative to the working folder, '..' and symlinks.
                if not s.startswith("/"):
                    s = wd_slash + s
                todo = s.split("/")
                todo.reverse()
                out = ""
                hops = 0
                while todo:
                    c = todo.pop()
                    if c == "" or c == ".":
                        continue
                    if c == "..":
                        out = out[:out.rfind("/")] if out else ""
                        continue
                    cand = out + "/" + c
                    try:
                        st_mode = lstat(cand).st_mode
                    except oserror:
                        out = cand
                        continue
                    if (st_mode & fmt) == lnk:
                        hops += 1
                        if hops > 40:
                            bad = "symlink loop"
                            break
                        target = readlink(cand)
                        if target.startswith("/"):
                            out = ""
                        parts = target.split("/")
                        parts.reverse()
                        todo += parts
                    else:
                        out = cand
                if bad is not None:
                    break
                r = out if out else "/"
                try:
                    kind = lstat(r).st_mode & fmt
                except oserror:
                    kind = -1
                inside = r == workdir or r.startswith(wd_slash)
                in_ro = False
                if not inside and (mode == "r" or mode == "l" or mode == "e"):
                    for p, ps in ro:
                        if r == p or r.startswith(ps):
                            in_ro = True
                            break
                    if in_ro:
                        for p, ps in ex:
                            if r == p or r.startswith(ps):
                                in_ro = False
                                break
                if mode == "r":
                    ok = ((inside and (kind == -1 or kind == reg or kind == dirt))
                          or (in_ro and kind == reg) or r in safe_read)
                elif mode == "w":
                    if inside and kind == -1:
                        ok = next_(created) < max_files
                    else:
                        ok = (inside and (kind == reg or kind == dirt)) or r in safe_write
                elif mode == "l":
                    ok = inside or in_ro
                elif mode == "e":
                    ok = in_ro and kind == reg
                elif mode == "x":
                    ok = inside and r != workdir
                elif mode == "c":
                    ok = inside and r != workdir and next_(created) < max_files
                else:  # "d": chdir
                    ok = r == workdir
                if not ok:
                    bad = r
            if bad is None:
                return
            msg = "[sandbox] blocked " + event
            if bad:
                msg = msg + " " + bad
            try:
                write(2, sencode(msg, "utf-8", "replace")[:500] + b"\n")
            except oserror:
                pass
            if blocked_import:
                raise import_exc(msg)
            raise deny_exc(msg)

        return hook

    sys.addaudithook(make_hook(workdir, tuple(prefixes), tuple(excluded), max_files,
                               marshal_callers, code_new_callers, blocked_modules,
                               blocked_module_prefix))

    main = type(sys)("__main__")
    main.__file__ = main_path
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = [main_path]
    try:
        code = compile(source, main_path, "exec", dont_inherit=True)
        del source
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # print the program's traceback without this frame
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        sys.exit(1)


_BOOTSTRAP = inspect.getsource(_child_main) + "\n_child_main()\n"

# Writes "ok", plus " nproc" when a thread can still start under RLIMIT_NPROC = 4 (in a user
# namespace that means the count is per namespace, kernel >= 5.14, or the child is exempt).
_PROBE_CODE = """
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


# --------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------
def _base_env(workdir: str) -> dict[str, str]:
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
    if os.environ.get("LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def _unshare_argv() -> list[str] | None:
    exe = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None:
        return None
    return [exe, "--user", "--map-root-user", "--net"]


def _user_kwargs(drop: bool) -> dict:
    if not drop:
        return {}
    return {"user": NOBODY_UID, "group": NOBODY_UID, "extra_groups": []}


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[bool, bool], tuple[bool, bool]] = {}


def _reset_probe_lock_in_child() -> None:  # a fork while another thread probes must not deadlock
    global _probe_lock
    _probe_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_probe_lock_in_child)


def _probe(*, netns: bool, drop: bool) -> bool:
    """Whether a child started this way (namespace wrapper / uid drop) works here."""
    return _probe_details(netns=netns, drop=drop)[0]


def _probe_details(*, netns: bool, drop: bool) -> tuple[bool, bool]:
    """(works, RLIMIT_NPROC counts per user namespace) for children started this way; cached."""
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
                argv = prefix + [sys.executable, "-I", "-S", "-B", "-c", _PROBE_CODE,
                                 "nproc" if netns else "-"]
                proc = subprocess.run(argv, cwd=workdir, env=_base_env(workdir), stdin=subprocess.DEVNULL,
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


def isolation_report(limits: SandboxLimits | None = None) -> dict[str, bool]:
    """Which optional OS layers a run with ``limits`` would use on this machine."""
    limits = limits or SandboxLimits()
    drop = bool(limits.drop_privileges and os.geteuid() == 0 and _probe(netns=False, drop=True))
    netns = bool(limits.network_namespace and _probe(netns=True, drop=drop))
    return {"running_as_root": os.geteuid() == 0, "drop_privileges": drop, "network_namespace": netns}


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


def run_python(code: str, *, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` (Python source) in the sandbox, feeding ``stdin``; see the module docstring."""
    if not isinstance(code, str):
        raise TypeError(f"code must be str, not {type(code).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"stdin must be str, not {type(stdin).__name__}")
    limits = limits or SandboxLimits()
    start = time.monotonic()
    try:
        return _run(code, stdin, limits, start)
    except Exception as exc:  # the sandbox's own failure (e.g. no fds left), never the program's
        log.warning("sandbox: run failed: %r", exc)
        return SandboxResult("", f"sandbox error: {exc!r}", None, False, False, "sandbox_error",
                             time.monotonic() - start)


def _run(code: str, stdin: str, limits: SandboxLimits, start: float) -> SandboxResult:
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

    cpu_soft = max(1, math.ceil(limits.cpu_s))
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="rf-sandbox-"))
    stdin_file = None
    proc = None
    try:
        main_path = os.path.join(workdir, "main.py")
        with open(main_path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(code)
        if drop:
            os.chown(workdir, NOBODY_UID, NOBODY_UID)
            os.chown(main_path, NOBODY_UID, NOBODY_UID)
        stdin_file = tempfile.TemporaryFile()
        stdin_file.write(stdin.encode("utf-8", errors="surrogatepass"))
        stdin_file.seek(0)
        os.fchmod(stdin_file.fileno(), 0o644)  # so /dev/stdin can be reopened by uid 65534

        argv = (_unshare_argv() or []) if netns else []
        argv += [
            sys.executable, "-I", "-S", "-B", "-X", "utf8", "-X", "int_max_str_digits=0",
            "-c", _BOOTSTRAP, workdir, str(cpu_soft), str(cpu_soft + 1),
            str(limits.memory_mb << 20), str(limits.max_file_bytes), str(limits.max_open_files),
            str(nproc), str(limits.max_files), repr(limits.wall_s + _WATCHDOG_GRACE_S),
        ]
        deadline = time.monotonic() + limits.wall_s
        proc = subprocess.Popen(
            argv, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
            env=_base_env(workdir), close_fds=True, start_new_session=True, umask=0o077,
            **_user_kwargs(drop),
        )
        out, err, parent_reason = _pump(proc, limits, deadline)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
            cpu_used = usage.ru_utime + usage.ru_stime
        except ChildProcessError:  # someone else reaped it
            returncode, cpu_used = None, 0.0
        proc.returncode = returncode if returncode is not None else -signal.SIGKILL
        seconds = time.monotonic() - start
    finally:
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            if proc.returncode is None:  # an exception before reaping: make sure it is gone
                _kill_group(proc.pid)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
        if stdin_file is not None:
            stdin_file.close()
        _remove_tree(workdir)

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
    else:
        reason = "exit_code"
    return SandboxResult(stdout, stderr, returncode, timed_out, killed, reason, seconds)
