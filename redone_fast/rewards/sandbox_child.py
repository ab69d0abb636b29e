"""The program the sandboxed interpreter runs first: it arms the limits and the audit hook, then runs
the untrusted ``main.py``.

Started by :mod:`redone_fast.rewards.sandbox` as
``python -I -S -B ... sandbox_child.py WORKDIR CPU_SOFT CPU_HARD MEM FSIZE NOFILE NPROC MAX_FILES
WATCHDOG_S`` (under bubblewrap this file is bound read-only into the sandbox; without it, its source
is passed with ``-c``). ``-S`` means no ``site``: only the standard library is importable, and this
module may import nothing but the standard library. Importing it has no side effects (tests inspect
:func:`make_hook`); only running it as ``__main__`` does anything.

Everything here runs before the first line of the program, in this order, because each step relies on
the previous one: limits first (nothing may run unlimited), the watchdog (the wall clock must hold even
if the parent is gone), then the removal of the functions the audit hook cannot see, then the hook.
The hook is the *second* layer: under bubblewrap the kernel already confines the process; without it
(the "weak" isolation) the hook is all there is, and it is not a security boundary.

Rules for this file, each one there because the program runs in the same interpreter afterwards:

* The hook function is never bound to a name in any frame or module: ``sys.addaudithook(make_hook(...))``
  is one expression, so the program cannot reach the hook (and its closure cells, which are writable)
  through ``sys._getframe().f_back.f_locals`` or this module's globals.
* The hook looks up no global or builtin name at run time and calls no Python function the program
  could replace: every name it uses is an immutable object bound in its closure at install time
  (``tests/test_sandbox.py`` checks its bytecode).
* No original of a removed function is kept anywhere (a wrapper's closure would hand it back).
"""

from __future__ import annotations

import sys

# Builtin/extension modules the program may not import: native code, process creation, a second
# interpreter without the hook, privileged system interfaces. Checked on every import event.
BLOCKED_MODULES = frozenset((
    "ctypes", "_ctypes", "_posixsubprocess", "posix", "_signal", "_imp", "_sqlite3", "sqlite3",
    "_dbm", "_gdbm", "readline", "_ssl", "_multiprocessing", "_posixshmem", "syslog",
    "_tkinter", "pwd", "grp", "spwd", "nis", "ossaudiodev", "_xxsubinterpreters",
    "_xxinterpchannels", "_interpreters", "_interpchannels", "_interpqueues",
))
BLOCKED_MODULE_PREFIX = ("_test", "_xx", "xx", "_ctypes")

# Functions without an audit event that act on the file system or on other processes: deleted from
# posix/os before the program runs. mknod/mkfifo create special files anywhere (the escapes this list
# was written for), chroot/unshare/setns change the process's view of the system, the rest signal or
# reschedule other processes.
UNAUDITED_OS_FUNCTIONS = (
    "mknod", "mkfifo", "chroot", "unshare", "setns", "pidfd_open", "setpriority",
    "sched_setaffinity", "sched_setscheduler", "sched_setparam",
)


def parse_args(argv):
    """(workdir, cpu_soft, cpu_hard, mem, fsize, nofile, nproc, max_files, watchdog_s) from argv[1:]."""
    ints = [int(x) for x in argv[2:9]]
    return (argv[1], *ints, float(argv[9]))


def setup_error(message):
    """Report a failure of the sandbox itself (not of the program) the way the parent recognises."""
    import posix
    posix.write(2, ("[sandbox-setup-error] %s\n" % (message,)).encode())
    posix._exit(125)


def apply_rlimits(cpu_soft, cpu_hard, mem, fsize, nofile, nproc):
    """Set soft = hard limits (so the program cannot raise them again); nproc 0 means "leave it"."""
    import resource

    def set_limit(which, soft, hard):
        # Never above an existing hard limit: that would fail (and the lower one is stricter anyway).
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
        setup_error("setrlimit: %r" % (exc,))


def start_watchdog(seconds):
    """End the process ``seconds`` from now even if the parent that should kill it is gone.

    A small-stack thread whose defaults bind what it needs, so that nothing the program rebinds
    later (``time.sleep``, ``os._exit``) changes it.
    """
    import _thread
    import posix
    import time

    def watchdog(sleep=time.sleep, exit_=posix._exit, seconds=seconds):
        sleep(seconds)
        exit_(137)

    _thread.stack_size(1 << 18)
    _thread.start_new_thread(watchdog, ())
    _thread.stack_size(0)


def refuse_fork_exec(*args, **kwargs):
    """Stands in for ``_posixsubprocess.fork_exec`` (no audit event): ``import subprocess`` still works."""
    raise PermissionError("[sandbox] blocked _posixsubprocess.fork_exec")


def refuse_create_builtin(spec):
    """Stands in for ``_imp.create_builtin``, which makes fresh, un-neutered builtin modules silently."""
    raise ModuleNotFoundError("[sandbox] blocked _imp.create_builtin")


def refuse_frozen_object(*args, **kwargs):
    """Stands in for ``_imp.get_frozen_object``: its ``data`` argument unmarshals bytes without an audit
    event (forged bytecode). Every frozen module is imported before this replaces it."""
    raise ModuleNotFoundError("[sandbox] blocked _imp.get_frozen_object")


def remove_unaudited_functions():
    """Take away what the audit hook would never see (see UNAUDITED_OS_FUNCTIONS)."""
    import _signal
    import os
    import posix

    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = refuse_fork_exec
    except ImportError:
        pass
    for name in UNAUDITED_OS_FUNCTIONS:
        posix.__dict__.pop(name, None)
        os.__dict__.pop(name, None)
    _signal.__dict__.pop("pidfd_send_signal", None)


def preload_builtin_and_frozen_modules():
    """Import every allowed builtin and frozen module now, then disable the two ways of making more.

    ``_imp.create_builtin`` would re-create a builtin module (``posix`` with its functions back);
    ``_imp.get_frozen_object`` can unmarshal arbitrary data. Once both are refusals, the modules
    imported here are the only copies. Frozen test modules (``__hello__`` & co., which print) are
    skipped.
    """
    import _imp

    names = list(sys.builtin_module_names)
    frozen = getattr(_imp, "_frozen_module_names", None)
    if frozen is not None:
        names += [n for n in frozen() if not n.startswith("__")]
    for name in names:
        if (name not in sys.modules and name not in BLOCKED_MODULES
                and not name.startswith(BLOCKED_MODULE_PREFIX)):
            try:
                __import__(name)
            except Exception:
                pass
    _imp.create_builtin = refuse_create_builtin
    _imp.get_frozen_object = refuse_frozen_object


def readable_prefixes():
    """(standard library folders the program may read, their site-packages it may not).

    This file's own folder is readable too (under bubblewrap it holds only this file), so that a
    traceback through the hook can show its line instead of failing to read it.
    """
    from os.path import dirname, realpath
    prefixes = []
    own = globals().get("__file__")
    for entry in sys.path + ([dirname(own)] if isinstance(own, str) else []):
        if isinstance(entry, str) and entry.startswith("/"):
            real = realpath(entry)
            if real != "/" and real not in prefixes:
                prefixes.append(real)
    excluded = [p + "/" + d for p in prefixes for d in ("site-packages", "dist-packages")]
    return tuple(prefixes), tuple(excluded)


def trusted_code_objects():
    """(the import system's ``_compile_bytecode``, ``types.coroutine``): the only callers let through
    for ``marshal.loads`` (after checking the data) and ``code.__new__``; ``()`` entries when this
    CPython differs (then marshal is refused outright and imports compile from source)."""
    import _frozen_importlib_external as bootstrap_external
    import types
    compile_bytecode = getattr(bootstrap_external, "_compile_bytecode", None)
    code = getattr(compile_bytecode, "__code__", None)
    if code is None or not {"data", "bytecode_path"} <= set(code.co_varnames):
        code = None
        sys.implementation.cache_tag = None  # no .pyc: SourceLoader compiles from source
    return code, types.coroutine.__code__


def make_hook(workdir, prefixes, excluded, max_files, compile_bytecode_code, coroutine_code,
              blocked_modules, blocked_module_prefix):
    """The audit hook: refuses (``PermissionError``, ``ModuleNotFoundError`` for imports) and writes
    ``[sandbox] blocked EVENT [what]`` to stderr for every operation docs/design.md, "The code sandbox"
    lists under "The audit hook". Everything it uses is bound here, as immutable objects.

    The hook is one long function on purpose: a helper it called would be a Python function object
    (mutable: its ``__code__`` could be swapped if the program ever reached it) and a global lookup
    could be rebound, so path resolution and every check are written inline."""
    import itertools
    import posix
    type_, str_, bytes_, int_, issubclass_, len_ = type, str, bytes, int, issubclass, len
    memoryview_ = memoryview
    next_ = next
    sstr, bdecode, sencode = str.__str__, bytes.decode, str.encode
    deny_exc, import_exc, oserror, keyerror = PermissionError, ModuleNotFoundError, OSError, KeyError
    lstat, readlink, write, getframe = posix.lstat, posix.readlink, posix.write, sys._getframe
    popen, pread, pclose, o_rdonly = posix.open, posix.read, posix.close, posix.O_RDONLY | posix.O_CLOEXEC
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
        "sys._current_frames", "sys._current_exceptions", "marshal.load",
    ))
    deny_prefix = ("socket.", "ctypes.", "urllib.", "http.", "ftplib.", "smtplib.",
                   "imaplib.", "poplib.", "nntplib.", "telnetlib.", "sqlite3.", "dbm.",
                   "syslog.", "winreg.", "msvcrt.")
    list_events = frozenset(("os.listdir", "os.scandir", "os.getxattr", "os.listxattr"))
    modify_events = frozenset(("os.remove", "os.rmdir", "os.truncate", "os.chmod",
                               "os.chown", "os.utime", "os.setxattr", "os.removexattr"))

    def hook(event, args):
        if type_(event) is not str_:
            return  # only sys.audit() from the program itself can pass anything else
        checks = ()
        bad = None
        blocked_import = False
        pyc = None  # marshal.loads: the bytes being unmarshalled, to compare with the .pyc file
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
        elif event == "marshal.loads":
            # Only the import system's own _compile_bytecode, only on immutable data that is byte
            # for byte a .pyc file of the read-only standard library (checked below): whatever the
            # program patched (loaders, cache_from_source, builtins), no forged bytecode gets through.
            bad = "marshal outside the import system"
            frame = getframe(1)
            if compile_bytecode_code is not None and frame.f_code is compile_bytecode_code:
                loc = frame.f_locals
                try:
                    data, path = loc["data"], loc["bytecode_path"]
                except keyerror:
                    data = path = None
                t = type_(data)
                if t is bytes_ or (t is memoryview_ and type_(data.obj) is bytes_):
                    if type_(args[0]) is bytes_ and (type_(path) is str_ or type_(path) is bytes_):
                        bad = None
                        pyc = args[0]
                        checks = ((path, "b"),)
        elif event == "code.__new__":
            if getframe(1).f_code is not coroutine_code:
                bad = "hand-made code object"
        elif event == "socket.__new__" and len_(args) > 1 and type_(args[1]) is int_ and args[1] == 1:
            return  # AF_UNIX sockets (asyncio's self-pipe, socketpair); connect/bind are refused
        elif event in deny or event.startswith(deny_prefix):
            bad = ""
        else:
            return

        r = ""
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
                    if mode == "d" or mode == "e" or mode == "b":
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
            if not inside and (mode == "r" or mode == "l" or mode == "e" or mode == "b"):
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
            elif mode == "e" or mode == "b":
                ok = in_ro and kind == reg
            elif mode == "x":
                ok = inside and r != workdir
            elif mode == "c":
                ok = inside and r != workdir and next_(created) < max_files
            else:  # "d": chdir
                ok = r == workdir
            if not ok:
                bad = r
        if bad is None and pyc is not None:
            # The bytes must be the standard library .pyc file's own (after its 16-byte header).
            content = b""
            try:
                fd = popen(r, o_rdonly)
                try:
                    while True:
                        chunk = pread(fd, 1 << 20)
                        if not chunk:
                            break
                        content += chunk
                finally:
                    pclose(fd)
            except oserror:
                content = b""
            if len_(content) != len_(pyc) + 16 or content[16:] != pyc:
                bad = "bytecode that is not the standard library's " + r
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


def read_program(main_path):
    """The program's source, read before the hook exists (so the read needs no exception)."""
    with open(main_path, "rb") as f:
        return f.read()


def run_program(source, main_path):
    """Run the program as ``__main__`` in a fresh module; print its traceback without this frame."""
    import builtins
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
    except BaseException as exc:
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        sys.exit(1)


def main(argv):
    """Arm every layer, in order (see the module docstring), then run ``WORKDIR/main.py``."""
    import os
    workdir, cpu_soft, cpu_hard, mem, fsize, nofile, nproc, max_files, watchdog_s = parse_args(argv)
    apply_rlimits(cpu_soft, cpu_hard, mem, fsize, nofile, nproc)
    start_watchdog(watchdog_s)
    remove_unaudited_functions()
    preload_builtin_and_frozen_modules()
    workdir = os.path.realpath(workdir)
    main_path = workdir + "/main.py"
    source = read_program(main_path)
    prefixes, excluded = readable_prefixes()
    compile_bytecode_code, coroutine_code = trusted_code_objects()
    # One expression: the hook is bound to no name anywhere the program could look.
    sys.addaudithook(make_hook(workdir, prefixes, excluded, max_files, compile_bytecode_code,
                               coroutine_code, BLOCKED_MODULES, BLOCKED_MODULE_PREFIX))
    run_program(source, main_path)


if __name__ == "__main__":
    main(sys.argv)
