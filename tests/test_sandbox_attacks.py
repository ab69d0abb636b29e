"""The attack battery: adversarial programs against redone_fast.rewards.sandbox, 0 escapes allowed.

Every program runs under bubblewrap (the default isolation) and, except the categories that would
hurt this machine if they escaped (signals to everyone, fork bombs, raw syscalls), under the weak
isolation too. After each run the test checks the world outside the sandbox, not what the program
says about itself:

* a sentinel folder (files, a "report" the trainer would write later, a unix socket) is byte for byte
  as before; no file named with this run's token appeared in /, /tmp, /etc, /root, /dev/shm, /var/tmp,
  the repository, the home folder or the Python installation; the standard library's os.py, the
  sandbox's own modules and /etc/passwd are unchanged;
* the TCP, UDP, unix-path and abstract unix listeners this module opened received nothing;
* the parent's secret environment variable appears nowhere in the output;
* two canary processes (one root's, one uid 65534's) and this process are alive; no sandboxed
  process is left over;
* the run ended within its wall clock plus a margin, and a program that hits a limit gets that
  limit as its reason.

Programs print ``ESCAPED <what>`` when a step that must fail succeeded, which is also an escape.

Without bubblewrap the bubblewrap half is skipped, or fails where REDONE_REQUIRE_BWRAP=1 (CI). The
refusal path (no bubblewrap, no opt-in) and the weak opt-in are tested with a nonexistent bwrap.
"""

from __future__ import annotations

import dis
import errno
import hashlib
import marshal
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

import pytest

import redone_fast.rewards.sandbox as sandbox
from redone_fast.rewards import code_exec as code_exec_module
from redone_fast.rewards.sandbox import SandboxLimits, SandboxUnavailableError, isolation_report, run_python

TOKEN = "rfatk" + os.urandom(5).hex()  # names every file an attack tries to plant
SECRET_VAR = "RF_ATTACK_SECRET"
SECRET = "s3cr3t-" + os.urandom(8).hex()
MARGIN = 2.5  # seconds beyond wall_s (start-up, kill, reap, a loaded 2-core machine)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOME = os.path.expanduser("~")
NO_BWRAP = "/nonexistent/bin/bwrap"


def _forged_code_bytes() -> bytes:
    """A marshalled code object whose LOAD_CONST reads far past its one constant (no check in the
    interpreter loop: on CPython 3.11 running it segfaults). What forged .pyc attacks smuggle in."""
    op = dis.opmap
    code = compile("None", "forged", "exec").replace(
        co_code=bytes([op["RESUME"], 0, op["LOAD_CONST"], 250, op["RETURN_VALUE"], 0]),
        co_consts=(None,), co_stacksize=1)
    return marshal.dumps(code)


FORGED_BODY = _forged_code_bytes()
# One configuration for the whole battery: small limits keep it fast.
LIMITS = SandboxLimits(cpu_s=1.0, wall_s=2.0, memory_mb=160, max_output_bytes=16384,
                       max_file_bytes=256 << 10, max_open_files=32, max_processes=8, max_files=24,
                       max_disk_bytes=2 << 20)
WEAK_LIMITS = SandboxLimits(cpu_s=1.0, wall_s=2.0, memory_mb=160, max_output_bytes=16384,
                            max_file_bytes=256 << 10, max_open_files=32, max_processes=8, max_files=24,
                            allow_weak_isolation=True, bwrap=NO_BWRAP)


# --------------------------------------------------------------------------------- the world outside


@dataclass
class World:
    """What the attacks aim at, set up once for the module."""

    sentinel: str  # a folder every uid may write: only the sandbox protects it
    root: str  # tempfile.tempdir during the tests: the weak isolation's working folders
    tcp: socket.socket
    udp: socket.socket
    unix_path: socket.socket
    unix_abstract: socket.socket
    canaries: list[subprocess.Popen]
    watched_files: dict[str, str]  # path -> sha256 before

    @property
    def replacements(self) -> dict[str, str]:
        return {
            "@TOKEN@": TOKEN, "@SENTINEL@": self.sentinel, "@SECRET_VAR@": SECRET_VAR,
            "@TCP_PORT@": str(self.tcp.getsockname()[1]), "@UDP_PORT@": str(self.udp.getsockname()[1]),
            "@UNIX_PATH@": self.sentinel + "/trainer.sock", "@ABSTRACT@": "rf-attack-" + TOKEN,
            "@REPO@": REPO, "@HOME@": HOME, "@HOST_TMP@": tempfile.gettempdir(), "@PREFIX@": sys.base_prefix,
            "@STDLIB_OS@": os.__file__, "@CANARY_ROOT@": str(self.canaries[0].pid),
            "@CANARY_NOBODY@": str(self.canaries[1].pid), "@PARENT@": str(os.getpid()),
            "@FORGED_BODY@": repr(FORGED_BODY),
        }


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _snapshot(folder: str) -> dict[str, tuple]:
    """Everything about a folder's entries that an attack could change."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = _sha256(path) if os.path.isfile(path) and not os.path.islink(path) else None
            snap[os.path.relpath(path, folder)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest)
    return snap


def _watched_dirs(world: World) -> list[str]:
    dirs = ["/", "/tmp", "/etc", "/root", "/dev/shm", "/var/tmp", REPO, HOME, tempfile.gettempdir(),
            world.sentinel, sys.base_prefix, os.path.dirname(os.__file__), os.path.dirname(sandbox.__file__)]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _planted(world: World) -> list[str]:
    """Files named with the token anywhere the attacks aim (there must be none)."""
    found = []
    for d in _watched_dirs(world):
        try:
            found += [os.path.join(d, n) for n in os.listdir(d) if TOKEN in n]
        except OSError:
            pass
    return found


def _received(world: World) -> list[str]:
    """What the listeners got (there must be nothing)."""
    got = []
    for name, listener in (("tcp", world.tcp), ("unix", world.unix_path), ("abstract", world.unix_abstract)):
        try:
            conn, _ = listener.accept()
            conn.close()
            got.append(name)
        except (BlockingIOError, socket.timeout):
            pass
    try:
        data = world.udp.recv(65536)
        got.append(f"udp {data[:40]!r}")
    except (BlockingIOError, socket.timeout):
        pass
    return got


def _sandboxed_processes(world: World) -> list[int]:
    """Processes whose command line names this module's folders (sandboxes still running)."""
    marks = (world.root.encode(), TOKEN.encode())
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if any(m in cmdline for m in marks):
                found.append(int(name))
    return found


def _working_folders(root: str) -> list[str]:
    """The weak isolation's working folders in ``root`` (each must be gone after its run)."""
    return [n for n in os.listdir(root) if n.startswith("rf-sandbox-")]


def _start_canary(as_nobody: bool) -> subprocess.Popen:
    kwargs = {}
    if as_nobody and os.geteuid() == 0:
        kwargs = {"user": 65534, "group": 65534, "extra_groups": []}
    return subprocess.Popen(["sleep", "3600"], start_new_session=True, **kwargs)


@pytest.fixture(scope="module")
def world():
    saved_tempdir = tempfile.tempdir
    root = tempfile.mkdtemp(prefix="rf-attack-root-")
    os.chmod(root, 0o711)  # the weak isolation's uid 65534 must reach its working folder
    sentinel = tempfile.mkdtemp(prefix="rf-attack-sentinel-")
    os.chmod(sentinel, 0o777)
    for name, text in (("secret.txt", f"TOP-SECRET {SECRET}\n"), ("report.json", '{"step": 1}\n'),
                       ("victim.txt", "keep me\n")):
        with open(os.path.join(sentinel, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(sentinel, name), 0o666)
    os.mkdir(os.path.join(sentinel, "subdir"))
    os.chmod(os.path.join(sentinel, "subdir"), 0o777)

    def listener(family, kind, address):
        s = socket.socket(family, kind)
        s.bind(address)
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        s.setblocking(False)
        return s

    tcp = listener(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
    udp = listener(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0))
    unix_path = listener(socket.AF_UNIX, socket.SOCK_STREAM, os.path.join(sentinel, "trainer.sock"))
    os.chmod(os.path.join(sentinel, "trainer.sock"), 0o777)
    unix_abstract = listener(socket.AF_UNIX, socket.SOCK_STREAM, "\0rf-attack-" + TOKEN)
    canaries = [_start_canary(False), _start_canary(True)]
    watched = [os.__file__, sandbox.__file__, sandbox.CHILD_PATH, "/etc/passwd"]
    old_secret = os.environ.get(SECRET_VAR)
    os.environ[SECRET_VAR] = SECRET
    tempfile.tempdir = root
    w = World(sentinel, root, tcp, udp, unix_path, unix_abstract, canaries,
              {p: _sha256(p) for p in watched if os.path.isfile(p)})
    try:
        yield w
    finally:
        tempfile.tempdir = saved_tempdir
        if old_secret is None:
            os.environ.pop(SECRET_VAR, None)
        else:
            os.environ[SECRET_VAR] = old_secret
        for s in (tcp, udp, unix_path, unix_abstract):
            s.close()
        for c in canaries:
            c.kill()
            c.wait()
        leftovers = _working_folders(root)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(sentinel, ignore_errors=True)
        assert leftovers == [], leftovers  # the weak isolation removed every working folder


def _require_bubblewrap() -> dict:
    report = isolation_report(LIMITS)
    if report["isolation"] != "bubblewrap":
        if os.environ.get("REDONE_REQUIRE_BWRAP") == "1":
            pytest.fail(f"REDONE_REQUIRE_BWRAP=1 but bubblewrap is unusable here: {report['reason']}")
        pytest.skip(f"bubblewrap is not usable here: {report['reason']}")
    return report


# ---------------------------------------------------------------------------------------- the attacks


PRELUDE = '''
import os, sys
def attempt(label, f):
    """ESCAPED when the step that must fail succeeds."""
    try:
        r = f()
    except BaseException as e:
        print("refused", label, type(e).__name__)
        return
    print("ESCAPED", label, repr(r)[:120])
'''


@dataclass(frozen=True)
class Attack:
    name: str
    code: str
    reasons: frozenset | None = None  # the limit it must hit (its reason), None: any but sandbox_error
    weak: bool = True  # also run under the weak isolation (False: harmful to this machine if it escaped)


ATTACKS: list[Attack] = []


def attack(name: str, code: str, reasons=None, weak: bool = True) -> None:
    ATTACKS.append(Attack(name, textwrap.dedent(code), frozenset(reasons) if reasons else None, weak))


# --- files: writing and creating outside the working folder --------------------------------------
WRITE_TARGETS = {
    "sentinel": "@SENTINEL@/new-@TOKEN@", "sentinel-subdir": "@SENTINEL@/subdir/@TOKEN@",
    "etc": "/etc/@TOKEN@", "host-tmp": "/tmp/@TOKEN@", "tempdir": "@HOST_TMP@/@TOKEN@",
    "repo": "@REPO@/@TOKEN@", "home": "@HOME@/@TOKEN@", "root-dir": "/@TOKEN@",
    "dev-shm": "/dev/shm/@TOKEN@", "var-tmp": "/var/tmp/@TOKEN@", "python-prefix": "@PREFIX@/@TOKEN@",
    "dotdot": "../../../../../../../../tmp/@TOKEN@", "proc-cwd-dotdot": "/proc/self/cwd/../@TOKEN@",
    "proc-root": "/proc/self/root/tmp/@TOKEN@", "dev": "/dev/@TOKEN@",
}
for _label, _target in WRITE_TARGETS.items():
    attack(f"write-{_label}", f"attempt('open-w', lambda: open({_target!r}, 'w').write('pwned'))\n"
                              f"attempt('os.open', lambda: os.open({_target!r}, os.O_WRONLY | os.O_CREAT))")

attack("write-methods", """
    import io, shutil, tempfile, pathlib
    t = '@SENTINEL@/m-@TOKEN@'
    attempt('FileIO', lambda: io.FileIO(t, 'w'))
    attempt('open-x', lambda: open(t, 'x'))
    attempt('open-a', lambda: open('@SENTINEL@/victim.txt', 'a').write('pwned'))
    attempt('pathlib', lambda: pathlib.Path(t).write_text('pwned'))
    attempt('copy', lambda: shutil.copy('main.py', t))
    attempt('mkstemp', lambda: tempfile.mkstemp(dir='@SENTINEL@', prefix='@TOKEN@'))
    attempt('rename', lambda: os.rename('main.py', t))
    attempt('replace', lambda: os.replace('main.py', '@SENTINEL@/victim.txt'))
""")
attack("modify-sentinel", """
    v = '@SENTINEL@/victim.txt'
    attempt('truncate', lambda: os.truncate(v, 0))
    attempt('chmod', lambda: os.chmod(v, 0))
    attempt('utime', lambda: os.utime(v, (0, 0)))
    attempt('remove', lambda: os.remove(v))
    attempt('unlink-report', lambda: os.unlink('@SENTINEL@/report.json'))
    attempt('rmdir', lambda: os.rmdir('@SENTINEL@/subdir'))
    attempt('setxattr', lambda: os.setxattr(v, 'user.x', b'1'))
    attempt('chown', lambda: os.chown(v, 0, 0))
""")
attack("rmtree-sentinel", "import shutil\nattempt('rmtree', lambda: shutil.rmtree('@SENTINEL@'))")
attack("mkdir-outside", """
    attempt('mkdir', lambda: os.mkdir('@SENTINEL@/d-@TOKEN@'))
    attempt('makedirs', lambda: os.makedirs('/tmp/@TOKEN@/a/b'))
    attempt('makedirs-dotdot', lambda: os.makedirs('../../@TOKEN@'))
""")
attack("overwrite-stdlib", "attempt('stdlib', lambda: open('@STDLIB_OS@', 'a').write('#pwned'))")
attack("overwrite-sandbox-module", """
    import glob
    for p in ['/run/redone-sandbox/sandbox_child.py', '@REPO@/redone_fast/rewards/sandbox_child.py']:
        attempt(p, lambda: open(p, 'a').write('#pwned'))
""")
attack("chdir-outside-then-write", """
    attempt('chdir', lambda: os.chdir('@SENTINEL@'))
    attempt('write', lambda: open('../@TOKEN@', 'w').write('x'))
""")
attack("dirfd-escape", """
    attempt('dirfd', lambda: os.open('@TOKEN@', os.O_WRONLY | os.O_CREAT, dir_fd=os.open('@SENTINEL@', os.O_RDONLY)))
    attempt('dirfd-stdlib', lambda: os.open(os.path.dirname(os.__file__), os.O_RDONLY))
""")
attack("write-inside-is-allowed", """
    open('mine.txt', 'w').write('fine')
    os.mkdir('sub')
    open('sub/x', 'w').write('y')
    print('inside ok', open('mine.txt').read(), sorted(os.listdir('.')))
""")

# --- special files ------------------------------------------------------------------------------
attack("mknod-regular-inside", "attempt('mknod', lambda: os.mknod('node'))")
attack("mknod-regular-outside", "attempt('mknod', lambda: os.mknod('/etc/@TOKEN@'))\n"
                                "attempt('mknod2', lambda: os.mknod('@SENTINEL@/@TOKEN@'))")
attack("mknod-device", "import stat\n"
                       "attempt('mknod-chr', lambda: os.mknod('mem', stat.S_IFCHR | 0o666, os.makedev(1, 1)))")
attack("mkfifo-inside", "attempt('mkfifo', lambda: os.mkfifo('fifo'))")
attack("mkfifo-report", """
    # the issue's hang: a FIFO where the trainer will write its report
    attempt('mkfifo', lambda: (os.remove('@SENTINEL@/report.json'), os.mkfifo('@SENTINEL@/report.json')))
    attempt('mkfifo2', lambda: os.mkfifo('@SENTINEL@/@TOKEN@.json'))
""")
attack("mknod-via-posix", """
    attempt('import posix', lambda: __import__('posix').mknod('@SENTINEL@/@TOKEN@'))
    attempt('sys.modules', lambda: sys.modules['posix'].mknod('@SENTINEL@/@TOKEN@'))
    attempt('os.__dict__', lambda: os.__dict__['mkfifo']('@SENTINEL@/@TOKEN@'))
    attempt('getattr', lambda: getattr(os, 'mk' + 'nod')('@SENTINEL@/@TOKEN@'))
""")
attack("mknod-via-reload", """
    import importlib
    def go():
        m = importlib.reload(os)
        return m.mknod('@SENTINEL@/@TOKEN@')
    attempt('reload', go)
""")
attack("mknod-via-fresh-posix", """
    import importlib.util, _imp
    attempt('module_from_spec',
            lambda: importlib.util.module_from_spec(importlib.util.find_spec('posix')).mknod('@SENTINEL@/@TOKEN@'))
    attempt('create_builtin',
            lambda: _imp.create_builtin(importlib.util.find_spec('posix')).mknod('@SENTINEL@/@TOKEN@'))
""")
attack("socket-file", """
    import socket
    for p in ('s.sock', '@SENTINEL@/@TOKEN@.sock', '/tmp/@TOKEN@.sock'):
        attempt('bind ' + p, lambda: socket.socket(socket.AF_UNIX).bind(p))
    import _socket
    attempt('_socket', lambda: _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM).bind('@SENTINEL@/@TOKEN@2.sock'))
""")
attack("chroot", "attempt('chroot', lambda: os.chroot('.'))\nattempt('unshare', lambda: os.unshare(0x10000000))\n"
                 "attempt('setns', lambda: os.setns(0))")

# --- links ----------------------------------------------------------------------------------------
attack("symlink-etc", "attempt('symlink', lambda: os.symlink('/etc/passwd', 'p') or open('p').read())")
attack("symlink-sentinel-write",
       "attempt('symlink', lambda: os.symlink('@SENTINEL@/victim.txt', 'v') or open('v', 'w').write('pwned'))")
attack("symlink-pathlib", "import pathlib\nattempt('symlink_to', lambda: pathlib.Path('l').symlink_to('@SENTINEL@'))")
attack("hardlink-sentinel",
       "attempt('link', lambda: os.link('@SENTINEL@/victim.txt', 'h') or open('h', 'w').write('pwned'))")
attack("hardlink-passwd", "attempt('link', lambda: os.link('/etc/passwd', 'pw') or open('pw').read())")
attack("symlink-outside-planted", "attempt('symlink', lambda: os.symlink('/', '@SENTINEL@/@TOKEN@'))")

# --- secrets ----------------------------------------------------------------------------------------
attack("read-shadow", "attempt('shadow', lambda: open('/etc/shadow').read())")
attack("read-passwd", "attempt('passwd', lambda: open('/etc/passwd').read())\n"
                      "attempt('passwd-bytes', lambda: open(b'/etc/passwd').read())")
attack("read-sentinel-secret", "attempt('secret', lambda: open('@SENTINEL@/secret.txt').read())\n"
                               "attempt('os.read', lambda: os.read(os.open('@SENTINEL@/secret.txt', os.O_RDONLY), 99))")
attack("read-repo", "attempt('readme', lambda: open('@REPO@/README.md').read(100))\n"
                    "attempt('listdir', lambda: os.listdir('@REPO@'))")
attack("read-home", "attempt('home', lambda: os.listdir('@HOME@'))\n"
                    "attempt('ssh', lambda: os.listdir('@HOME@/.ssh'))")
attack("env-secret", """
    v = os.environ.get('@SECRET_VAR@')
    print('ESCAPED env' if v else 'no secret in env', sorted(os.environ))
""")
attack("proc-environ", """
    for p in ('/proc/self/environ', '/proc/1/environ', '/proc/%d/environ' % os.getppid(), '/proc/@PARENT@/environ'):
        try:
            data = open(p, 'rb').read()
            print('ESCAPED' if b'@SECRET_VAR@' in data else 'read-no-secret', p)
        except Exception as e:
            print('refused', p, type(e).__name__)
""")
attack("proc-scan-environ", """
    hits = 0
    try:
        pids = [p for p in os.listdir('/proc') if p.isdigit()]
    except Exception as e:
        pids = []
        print('refused listdir', type(e).__name__)
    for p in pids:
        try:
            if b'@SECRET_VAR@' in open('/proc/%s/environ' % p, 'rb').read():
                hits += 1
        except Exception:
            pass
    print('ESCAPED' if hits else 'no secret', len(pids))
""")
attack("proc-parent-cmdline", "attempt('cmdline', lambda: open('/proc/@PARENT@/cmdline').read())\n"
                              "attempt('root-of-1', lambda: os.listdir('/proc/1/root/'))")
attack("proc-self-root", "attempt('root', lambda: open('/proc/self/root/etc/passwd').read())")
attack("listdir-root", "attempt('/', lambda: os.listdir('/'))\nattempt('/etc', lambda: os.listdir('/etc'))")
attack("read-site-packages", """
    import glob
    attempt('glob', lambda: [p for p in glob.glob('@PREFIX@/lib/python3*/site-packages/*')] or 1/0)
    sys.path.append('@REPO@')
    attempt('import-project', lambda: __import__('redone_fast'))
""")
attack("path-object-lie", """
    class Liar(str):
        def startswith(self, *a): return True
        def __fspath__(self): return 'main.py'
    attempt('liar', lambda: open(Liar('/etc/passwd')).read())
    class P:
        def __fspath__(self): return '/etc/passwd'
    attempt('fspath', lambda: open(P()).read())
""")

# --- network ------------------------------------------------------------------------------------------
attack("tcp-connect", """
    import socket
    attempt('create_connection', lambda: socket.create_connection(('127.0.0.1', @TCP_PORT@), timeout=1).sendall(b'x'))
    attempt('localhost', lambda: socket.create_connection(('localhost', @TCP_PORT@), timeout=1))
""")
attack("tcp-raw-socket", """
    import _socket
    def go():
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.connect(('127.0.0.1', @TCP_PORT@))
        s.send(b'x')
    attempt('_socket', go)
""")
attack("udp-send", """
    import socket
    attempt('sendto', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', @UDP_PORT@)))
""")
attack("unix-abstract", """
    import socket
    attempt('abstract', lambda: socket.socket(socket.AF_UNIX).connect('\\0@ABSTRACT@'))
""")
attack("unix-path", """
    import socket
    attempt('path', lambda: socket.socket(socket.AF_UNIX).connect('@UNIX_PATH@'))
""")
attack("ipv6", "import socket\nattempt('v6', lambda: socket.create_connection(('::1', @TCP_PORT@), timeout=1))")
attack("asyncio-connect", """
    import asyncio
    async def go():
        r, w = await asyncio.open_connection('127.0.0.1', @TCP_PORT@)
        w.write(b'x')
        await w.drain()
    attempt('asyncio', lambda: asyncio.run(go()))
""")
attack("urllib", """
    import urllib.request
    attempt('urlopen', lambda: urllib.request.urlopen('http://127.0.0.1:@TCP_PORT@/', timeout=1))
""")
attack("http-client", """
    import http.client
    attempt('http', lambda: http.client.HTTPConnection('127.0.0.1', @TCP_PORT@, timeout=1).request('GET', '/'))
""")
attack("dns", "import socket\nattempt('getaddrinfo', lambda: socket.getaddrinfo('example.com', 80))")
attack("listen", "import socket\nattempt('bind', lambda: socket.socket().bind(('0.0.0.0', 0)))")
attack("socket-fromfd", """
    import socket
    for fd in range(3, 12):
        attempt('fromfd %d' % fd, lambda: socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM).send(b'x'))
""")
attack("socketpair-is-harmless", """
    import socket
    a, b = socket.socketpair()
    a.send(b'x')
    print('socketpair', b.recv(1))
""")

# --- processes (the ones that would hurt this machine if they escaped run under bubblewrap only) -------
attack("fork", "attempt('fork', lambda: os.fork())", weak=False)
attack("fork-bomb", """
    n = 0
    for _ in range(200):
        try:
            if os.fork() == 0:
                os._exit(0)
            n += 1
        except Exception:
            pass
    print('ESCAPED forks' if n else 'no forks', n)
""", weak=False)
attack("os-system", "attempt('system', lambda: os.system('echo hi > /tmp/@TOKEN@') == 0 or 1/0)", weak=False)
attack("subprocess", """
    import subprocess
    attempt('run-sh', lambda: subprocess.run(['/bin/sh', '-c', 'echo x > /tmp/@TOKEN@']))
    attempt('run-python', lambda: subprocess.run([sys.executable, '-c', 'print(1)']))
    attempt('check_output', lambda: subprocess.check_output('id', shell=True))
""", weak=False)
attack("exec-sh", "attempt('execv', lambda: os.execv('/bin/sh', ['sh', '-c', 'echo x > /tmp/@TOKEN@']))", weak=False)
attack("exec-python",
       "attempt('execv', lambda: os.execv(sys.executable, [sys.executable, '-c', 'print(\"ESCAPED exec\")']))",
       weak=False)
attack("posix-spawn", "attempt('spawn', lambda: os.posix_spawn('/bin/sh', ['sh'], {}))\n"
                      "attempt('spawnv', lambda: os.spawnv(os.P_WAIT, '/bin/sh', ['sh']))", weak=False)
attack("fork-exec-direct", """
    import _posixsubprocess
    attempt('fork_exec', lambda: _posixsubprocess.fork_exec([b'/bin/sh'], [b'/bin/sh'], True, (), None, None,
            -1, -1, -1, -1, -1, -1, -1, -1, False, False, None, None, None, -1, None, False))
""", weak=False)
attack("multiprocessing", """
    import multiprocessing
    def go():
        p = multiprocessing.Process(target=print, args=('ESCAPED child',))
        p.start()
        p.join()
    attempt('Process', go)
""", weak=False)
attack("process-pool", """
    import concurrent.futures
    def go():
        with concurrent.futures.ProcessPoolExecutor(2) as ex:
            return list(ex.map(abs, [1, 2]))
    attempt('pool', go)
""", weak=False)
attack("pty", "import pty\nattempt('pty.spawn', lambda: pty.spawn('/bin/sh'))\n"
              "attempt('forkpty', lambda: os.forkpty())", weak=False)
attack("thread-bomb", """
    import threading, time
    threading.stack_size(32768)
    n = 0
    try:
        for _ in range(100000):
            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
            n += 1
    except Exception as e:
        print('stopped', type(e).__name__)
    print('threads', n)
""", reasons={"timeout", "memory_limit", "cpu_limit", None, "exit_code", "signal:SIGABRT", "signal:SIGSEGV"},
       weak=False)

# --- signals to the parent and everyone ------------------------------------------------------------
attack("kill-parent", """
    import signal
    attempt('getppid', lambda: os.kill(os.getppid(), signal.SIGKILL))
    attempt('pytest', lambda: os.kill(@PARENT@, signal.SIGKILL))
""", weak=False)
attack("kill-canaries", """
    import signal
    attempt('root canary', lambda: os.kill(@CANARY_ROOT@, signal.SIGKILL))
    attempt('nobody canary', lambda: os.kill(@CANARY_NOBODY@, signal.SIGKILL))
""", weak=False)
attack("kill-all", "import signal\nattempt('kill -1', lambda: os.kill(-1, signal.SIGKILL))", weak=False)
attack("kill-pid-1", "import signal\nattempt('init', lambda: os.kill(1, signal.SIGKILL))", weak=False)
attack("killpg", """
    import signal
    attempt('own group', lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGTERM))
    attempt('parent group', lambda: os.killpg(@PARENT@, signal.SIGKILL))
""", weak=False)
attack("pidfd-signal", """
    import signal
    attempt('pidfd', lambda: signal.pidfd_send_signal(os.pidfd_open(@CANARY_ROOT@), signal.SIGKILL))
""", weak=False)
attack("priority", "attempt('setpriority', lambda: os.setpriority(os.PRIO_PROCESS, @CANARY_ROOT@, 19))\n"
                   "attempt('affinity', lambda: os.sched_setaffinity(@CANARY_ROOT@, {0}))")

# --- resource bombs --------------------------------------------------------------------------------
attack("cpu-loop", "while True:\n    pass", reasons={"cpu_limit"})
attack("cpu-loop-thread", """
    import threading
    def spin():
        while True:
            pass
    threading.Thread(target=spin).start()
""", reasons={"cpu_limit", "timeout"})
attack("cpu-ignore-sigxcpu", """
    import signal
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    while True:
        pass
""", reasons={"cpu_limit", "timeout"})
attack("sleep", "import time\ntime.sleep(60)", reasons={"timeout"})
attack("sleep-signal-proof", """
    import signal, time
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    time.sleep(60)
""", reasons={"timeout"})
attack("memory-one-block", "x = bytearray(4 << 30)\nprint('ESCAPED allocated')", reasons={"memory_limit"})
attack("memory-growth", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))", reasons={"memory_limit"})
attack("memory-mmap", "import mmap\nm = mmap.mmap(-1, 4 << 30)\nprint('ESCAPED mapped')", reasons={"exit_code"})
attack("disk-fill-one-file", "open('big', 'wb').write(b'x' * (64 << 20))",
       reasons={"file_size_limit", "memory_limit", "disk_limit"})
attack("disk-fill-many-files", """
    for i in range(100):
        with open('f%d' % i, 'wb') as f:
            f.write(b'x' * (250 << 10))
""", reasons={"disk_limit", "blocked", "file_size_limit"})
attack("inode-flood", """
    n = 0
    try:
        for i in range(100000):
            open('i%d' % i, 'w').close()
            n += 1
    except Exception as e:
        print('stopped', type(e).__name__)
    print('created', n)
    assert n <= 24, n
""")
attack("inode-flood-dirs", """
    n = 0
    try:
        for i in range(100000):
            os.mkdir('d%d' % i)
            n += 1
    except Exception as e:
        print('stopped', type(e).__name__)
    assert n <= 24, n
""")
attack("fd-exhaustion", """
    fds = []
    try:
        while True:
            fds.append(os.open('main.py', os.O_RDONLY))
    except OSError as e:
        print('stopped', e.errno)
    assert len(fds) < 32, len(fds)
""")
attack("huge-stdout", "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)", reasons={"output_limit"})
attack("huge-stderr", "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)", reasons={"output_limit"})
attack("huge-print-once", "print('x' * (50 << 20))", reasons={"output_limit", "memory_limit"})
attack("blocked-flood", """
    while True:
        try:
            open('/etc/passwd')
        except PermissionError:
            pass
""", reasons={"output_limit", "cpu_limit"})
attack("deep-recursion", "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n): return f(n + 1)\nf(0)",
       reasons={"signal:SIGSEGV", "memory_limit", "exit_code", "cpu_limit"})
attack("int-str-bomb", "print(len(str(10 ** 10_000_000)))", reasons={"cpu_limit", "timeout"})

# --- the audit hook and import tricks -----------------------------------------------------------------
attack("addaudithook", """
    calls = []
    try:
        sys.addaudithook(lambda e, a: calls.append(e))
    except Exception as e:
        print('refused addaudithook', type(e).__name__)
    open('main.py').close()
    print('ESCAPED hook added' if calls else 'addaudithook refused')
    attempt('passwd after', lambda: open('/etc/passwd').read())
""")
attack("audit-spoof", "attempt('spoof', lambda: sys.audit('os.chdir', '/'))\n"
                      "attempt('passwd', lambda: open('/etc/passwd').read())")
attack("gc-find-hook", """
    import gc
    attempt('get_objects', lambda: [o for o in gc.get_objects() if getattr(o, '__name__', '') == 'hook'][0])
    attempt('get_referrers', lambda: gc.get_referrers(sys))
    attempt('get_referents', lambda: gc.get_referents(sys))
""")
attack("frames-find-hook", """
    f = sys._getframe()
    seen = []
    while f is not None:
        seen += [k for k, v in f.f_locals.items() if callable(v) and getattr(v, '__name__', '') == 'hook']
        f = f.f_back
    print('ESCAPED hook reachable' if seen else 'hook not in any frame')
    attempt('current_frames', lambda: sys._current_frames())
""")
attack("child-globals", """
    # The sandbox's own module is reachable through frames: rebinding its names changes nothing.
    f = sys._getframe(1)
    g = f.f_globals if f is not None else {}
    for name in list(g):
        if name.isupper() and isinstance(g[name], (frozenset, tuple)):
            g[name] = type(g[name])()  # empty the blocklists
    if 'make_hook' in g:
        g['make_hook']('/', ('/',), (), 10 ** 9, None, None, frozenset(), ())  # a permissive hook, never installed
    attempt('passwd', lambda: open('/etc/passwd').read())
    attempt('ctypes', lambda: __import__('ctypes'))
""")
attack("traceback-locals", """
    try:
        open('/etc/passwd')
    except PermissionError as e:
        tb = e.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        loc = tb.tb_frame.f_locals
        for k in list(loc):
            if isinstance(loc[k], str) and loc[k].startswith('/'):
                loc[k] = '/'
        tb.tb_frame.f_globals.clear()
    attempt('passwd after', lambda: open('/etc/passwd').read())
""")
attack("trace-profile", """
    attempt('settrace', lambda: sys.settrace(lambda *a: None))
    attempt('setprofile', lambda: sys.setprofile(lambda *a: None))
    import threading
    calls = []
    threading.settrace(lambda *a: calls.append(a))  # only stored: each new thread calls sys.settrace
    t = threading.Thread(target=lambda: sum(range(10)))
    t.start()
    t.join()
    print('ESCAPED thread traced' if calls else 'thread not traced')
""")
attack("builtins-tamper", """
    import builtins
    builtins.type = lambda *a: str
    builtins.issubclass = lambda *a: False
    builtins.isinstance = lambda *a: True
    builtins.len = lambda *a: 0
    builtins.next = lambda *a: 0
    attempt('passwd', lambda: open('/etc/passwd').read())
    attempt('write', lambda: open('@SENTINEL@/@TOKEN@', 'w').write('x'))
""")
attack("str-methods-tamper", """
    class S(str):
        def startswith(self, *a): return True
        def split(self, *a): return ['tmp']
        def __eq__(self, o): return True
        def __hash__(self): return 0
    attempt('subclass path', lambda: open(S('/etc/passwd')).read())
    attempt('bytes subclass',
            lambda: open(type('B', (bytes,), {'decode': lambda *a: 'main.py'})(b'/etc/passwd')).read())
""")
attack("ctypes", "attempt('ctypes', lambda: __import__('ctypes'))\nattempt('_ctypes', lambda: __import__('_ctypes'))")
attack("ctypes-by-path", """
    import importlib.machinery, importlib.util, glob
    so = (glob.glob(os.path.dirname(os.__file__) + '/lib-dynload/_ctypes*.so') or [''])[0]
    def go():
        loader = importlib.machinery.ExtensionFileLoader('_ctypes', so)
        spec = importlib.util.spec_from_file_location('_ctypes', so, loader=loader)
        return importlib.util.module_from_spec(spec)
    attempt('extension loader', go)
""")
attack("extension-copied-inside", """
    import importlib.machinery, importlib.util, glob, shutil
    so = (glob.glob(os.path.dirname(os.__file__) + '/lib-dynload/_ctypes*.so') or ['/nonexistent.so'])[0]
    def go():
        shutil.copy(so, '_ctypes.so')
        loader = importlib.machinery.ExtensionFileLoader('_ctypes', '_ctypes.so')
        return loader.create_module(importlib.util.spec_from_loader('_ctypes', loader))
    attempt('copied', go)
""")
attack("create-dynamic", """
    import _imp, importlib.util, glob
    so = (glob.glob(os.path.dirname(os.__file__) + '/lib-dynload/_ctypes*.so') or [''])[0]
    attempt('create_dynamic', lambda: _imp.create_dynamic(importlib.util.spec_from_file_location('_ctypes', so)))
""")
attack("marshal-direct", """
    import marshal
    attempt('loads', lambda: marshal.loads(marshal.dumps(compile('1', 's', 'eval'))))
    attempt('load', lambda: marshal.load(open('main.py', 'rb')))
""")
attack("code-object-forge", """
    import types
    c = compile('x = 1', 'f', 'exec')
    attempt('replace', lambda: c.replace(co_code=b'\\x00' * len(c.co_code)))
    attempt('CodeType', lambda: types.CodeType(0, 0, 0, 0, 0, 0, b'\\x64\\xff', (), (), (), 'f', 'f', 'f', 1,
                                               b'', b'', (), ()))
""")
FORGED_PYC = """
    import importlib.abc, importlib.util, importlib.machinery, marshal
    BODY = @FORGED_BODY@  # a marshalled code object reading past its constants: segfaults CPython 3.11
    def pyc_for(source, mtime=None, size=None):
        # A .pyc whose header matches the source, so that the import system trusts its body.
        if mtime is None:
            st = os.stat(source)
            mtime, size = int(st.st_mtime), st.st_size
        return (importlib.util.MAGIC_NUMBER + bytes(4) + (mtime & 0xFFFFFFFF).to_bytes(4, 'little')
                + (size & 0xFFFFFFFF).to_bytes(4, 'little') + BODY)
    forged = pyc_for(None, 0, 0)
"""
attack("forged-pyc-custom-loader", FORGED_PYC + """
    class Loader(importlib.abc.SourceLoader):
        def get_filename(self, name): return 'forged.py'
        def get_data(self, path): return forged if path.endswith('.pyc') else b'print(1)'
        def path_stats(self, path): return {'mtime': 0, 'size': 0}
    def go():
        spec = importlib.util.spec_from_loader('forged', Loader(), origin='forged.py')
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    attempt('custom SourceLoader', go)
""")
attack("forged-pyc-file", FORGED_PYC + """
    import importlib.util
    os.makedirs('__pycache__', exist_ok=True)
    open('forged.py', 'w').write('print(1)\\n')
    open(importlib.util.cache_from_source('forged.py'), 'wb').write(pyc_for('forged.py'))
    def go():
        sys.path.insert(0, os.getcwd())
        import forged
    attempt('SourceFileLoader', go)
""")
attack("forged-pyc-cache-redirect", FORGED_PYC + """
    import importlib._bootstrap_external as be
    open('victim_mod.py', 'w').write('print(1)\\n')
    open('evil.bin', 'wb').write(pyc_for('victim_mod.py'))
    be.cache_from_source = lambda path, *a, **k: os.path.abspath('evil.bin')
    def go():
        sys.path.insert(0, os.getcwd())
        import victim_mod
    attempt('cache_from_source', go)
""")
attack("forged-pyc-patched-get-data", FORGED_PYC + """
    import importlib._bootstrap_external as be
    real = be.FileLoader.get_data
    be.FileLoader.get_data = lambda self, path: (pyc_for(importlib.util.source_from_cache(path))
                                                  if path.endswith('.pyc') else real(self, path))
    attempt('stdlib import with forged bytes', lambda: __import__('colorsys'))
""")
attack("forged-pyc-memoryview-builtin", FORGED_PYC + """
    import builtins
    real = memoryview
    builtins.memoryview = lambda d: bytearray(forged)
    attempt('memoryview swap', lambda: __import__('wave'))
    builtins.memoryview = real
    ba = bytearray(forged)
    import importlib._bootstrap_external as be
    attempt('bytearray view', lambda: be._compile_bytecode(real(ba).toreadonly()))
    genuine = be.cache_from_source(os.path.dirname(os.__file__) + '/colorsys.py')
    attempt('_compile_bytecode direct', lambda: be._compile_bytecode(forged[16:], bytecode_path=genuine))
    attempt('genuine path, bytearray', lambda: be._compile_bytecode(bytearray(open(genuine, 'rb').read()[16:]),
                                                                    bytecode_path=genuine))
""")
attack("frozen-object", """
    import _imp, marshal
    attempt('get_frozen_object', lambda: _imp.get_frozen_object('os', bytes(16)))
    attempt('get_frozen_object name only', lambda: _imp.get_frozen_object('zipimport'))
""")
attack("zipimport-forged", """
    import zipfile, importlib.util
    with zipfile.ZipFile('z.zip', 'w') as z:
        z.writestr('zmod.pyc', importlib.util.MAGIC_NUMBER + bytes(12) + b'\\xe3' + b'\\xff' * 64)
    def go():
        sys.path.insert(0, os.path.abspath('z.zip'))
        import zmod
    attempt('zipimport', go)
""")
attack("subclasses-walk", """
    found = []
    for cls in object.__subclasses__():
        if cls.__name__ in ('_wrap_close', 'Popen', 'FileIO', 'BuiltinImporter'):
            found.append(cls)
    for cls in found:
        if cls.__name__ == 'FileIO':
            attempt('FileIO', lambda: cls('/etc/passwd').read())
        if cls.__name__ == 'BuiltinImporter':
            attempt('BuiltinImporter posix', lambda: cls.load_module('posix').mknod('@SENTINEL@/@TOKEN@'))
    print('walked', len(found))
""")
attack("pickle-reduce", """
    import pickle
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo x > /tmp/@TOKEN@',))
    attempt('pickle', lambda: pickle.loads(pickle.dumps(Evil())) == 0 or 1/0)
""", weak=False)
attack("hidden-imports", """
    for name in ('_xxsubinterpreters', '_testcapi', '_testinternalcapi', 'pwd',
                 '_sqlite3', 'readline', '_ssl', '_multiprocessing', '_posixshmem', '_interpreters'):
        attempt(name, lambda: __import__(name))
""")
attack("sys-modules-imp", """
    attempt('_imp from sys.modules', lambda: sys.modules['_imp'].create_builtin(type('S', (), {'name': 'posix'})()))
    attempt('importlib._imp', lambda: __import__('importlib')._bootstrap._imp.create_builtin(None))
""")
attack("setrlimit", """
    import resource
    attempt('raise cpu', lambda: resource.setrlimit(resource.RLIMIT_CPU, (100, 100)))
    attempt('raise as', lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1)))
    attempt('prlimit', lambda: resource.prlimit(0, resource.RLIMIT_CPU, (100, 100)))
""")
attack("exec-in-sub-interpreter", """
    attempt('run_string', lambda: __import__('_xxsubinterpreters').run_string(0, 'print(1)'))
    attempt('_interpreters', lambda: __import__('_interpreters').create())
""")
attack("watchdog-kill", """
    import threading
    for t in threading.enumerate():
        print('thread', t.name)
    attempt('current_frames', lambda: sys._current_frames())
    import time
    time.sleep(5)
""", reasons={"timeout"})

# --- namespace tricks -----------------------------------------------------------------------------
attack("unshare-setns", """
    attempt('unshare', lambda: os.unshare(os.CLONE_NEWUSER))
    attempt('setns', lambda: os.setns(os.open('/proc/1/ns/mnt', os.O_RDONLY)))
    attempt('ns fd', lambda: os.open('/proc/1/ns/user', os.O_RDONLY))
""")
attack("mount-via-anything", """
    attempt('mount', lambda: getattr(os, 'mount')('none', '/', 'tmpfs'))
    attempt('ptrace', lambda: __import__('ctypes').CDLL(None).ptrace(16, 1, 0, 0))
""")
attack("devices", """
    for p in ('/dev/mem', '/dev/kmsg', '/dev/sda', '/dev/vda', '/dev/tty', '/dev/full', '/dev/ptmx'):
        attempt(p, lambda: open(p, 'rb', buffering=0).read(1))
""")
attack("proc-sys-write", """
    for p in ('/proc/sys/kernel/hostname', '/proc/sys/vm/drop_caches', '/proc/sysrq-trigger',
              '/proc/sys/kernel/core_pattern'):
        attempt(p, lambda: open(p, 'w').write('1'))
""")


# ---------------------------------------------------------------------------------------- the checks


def _render(a: Attack, world: World) -> str:
    code = PRELUDE + a.code
    for key, value in world.replacements.items():
        code = code.replace(key, value)
    return code


def _assert_no_escape(a: Attack, result, elapsed: float, world: World, before: dict, limits: SandboxLimits) -> None:
    where = (f"{a.name} ({result.isolation}): reason={result.reason} rc={result.returncode}\n"
             f"{result.stdout}\n{result.stderr}")
    assert elapsed < limits.wall_s + MARGIN, where  # the wall clock held
    assert result.reason != "sandbox_error", where  # the sandbox itself worked
    if a.reasons is not None:
        assert result.reason in a.reasons, where  # the limit it hit is reported
    assert "ESCAPED" not in result.stdout, where
    assert SECRET not in result.stdout + result.stderr, where
    assert _snapshot(world.sentinel) == before, where
    assert _planted(world) == [], where
    assert _received(world) == [], where
    for path, digest in world.watched_files.items():
        assert _sha256(path) == digest, (path, where)
    assert all(c.poll() is None for c in world.canaries), where
    deadline = time.monotonic() + 3.0
    while _sandboxed_processes(world) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandboxed_processes(world) == [], where
    assert _working_folders(world.root) == [], where  # no working folder left behind


def _run_attack(a: Attack, world: World, limits: SandboxLimits):
    before = _snapshot(world.sentinel)
    t0 = time.monotonic()
    result = run_python(_render(a, world), limits=limits)
    _assert_no_escape(a, result, time.monotonic() - t0, world, before, limits)
    return result


@pytest.mark.parametrize("a", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_under_bubblewrap(a: Attack, world: World):
    _require_bubblewrap()
    result = _run_attack(a, world, LIMITS)
    assert result.isolation == "bubblewrap"


WEAK_ATTACKS = [a for a in ATTACKS if a.weak]


@pytest.mark.parametrize("a", WEAK_ATTACKS, ids=[a.name for a in WEAK_ATTACKS])
def test_attack_under_weak_isolation(a: Attack, world: World, monkeypatch):
    monkeypatch.delenv(sandbox.ALLOW_WEAK_ENV, raising=False)
    result = _run_attack(a, world, WEAK_LIMITS)
    assert result.isolation == "weak"


def test_the_battery_is_big_enough():
    assert len(ATTACKS) >= 100, len(ATTACKS)
    assert len({a.name for a in ATTACKS}) == len(ATTACKS)


def test_examples_really_attack(world: World):
    """The checks can fail: an attack step that succeeds outside the sandbox is seen by them."""
    a = next(x for x in ATTACKS if x.name == "write-sentinel")
    before = _snapshot(world.sentinel)
    code = _render(a, world)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "ESCAPED" in proc.stdout
    assert _snapshot(world.sentinel) != before and _planted(world)
    for path in _planted(world):
        os.remove(path)
    assert _snapshot(world.sentinel) == before and not _planted(world)


def test_forged_bytecode_is_dangerous_unguarded(world: World):
    """The forged-.pyc attacks are real: outside the sandbox the same loader hands the forged code
    to marshal, which accepts it (and on CPython 3.11 running it crashes the interpreter)."""
    a = next(x for x in ATTACKS if x.name == "forged-pyc-custom-loader")
    code = _render(a, world).replace("mod = importlib.util.module_from_spec(spec)",
                                     "print('loaded', type(spec.loader.get_code('forged')).__name__); mod = None")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30)
    assert "loaded code" in proc.stdout, proc.stdout + proc.stderr
    crash = subprocess.run([sys.executable, "-I", "-c", f"import marshal; exec(marshal.loads({FORGED_BODY!r}))"],
                           capture_output=True, timeout=30)
    if sys.version_info[:2] == (3, 11):
        assert crash.returncode == -signal.SIGSEGV


# ------------------------------------------------------------------ the OS layer alone (no audit hook)


RAW_PRELUDE = '''
import ctypes, errno, os, resource, sys
resource.setrlimit(resource.RLIMIT_CPU, (2, 3))
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
libc = ctypes.CDLL(None, use_errno=True)
def sys_(label, *args):
    """A raw syscall through libc: ESCAPED when it succeeds."""
    r = libc.syscall(*args)
    e = ctypes.get_errno()
    print(("ESCAPED " if r >= 0 else "refused ") + label, r, errno.errorcode.get(e, e))
''' + PRELUDE
NR = sandbox._DENIED_SYSCALLS.get(os.uname().machine, {})
RAW_ATTACKS: dict[str, str] = {
    "raw-mount": "sys_('mount', %d, b'none', b'/tmp', b'tmpfs', 0, None)" % NR.get("mount", -1),
    "raw-unshare-user": "sys_('unshare', %d, 0x10000000)" % NR.get("unshare", -1),
    "raw-setns": "sys_('setns', %d, os.open('/proc/self/ns/net', os.O_RDONLY), 0)" % NR.get("setns", -1),
    "raw-chroot": "sys_('chroot', %d, b'/tmp')" % NR.get("chroot", -1),
    "raw-ptrace": "sys_('ptrace', %d, 16, 1, 0, 0)" % NR.get("ptrace", -1),
    "raw-mknodat": "sys_('mknodat', %d, -100, os.getcwd().encode() + b'/n', 0o10644, 0)" % NR.get("mknodat", -1),
    "raw-keyctl": "sys_('add_key', %d, b'user', b'k', b'v', 1, -3)" % NR.get("add_key", -1),
    "raw-bpf": "sys_('bpf', %d, 0, None, 0)" % NR.get("bpf", -1),
    "raw-fork": "attempt('fork', os.fork)\nattempt('system', lambda: os.system('true') == 0 or 1/0)",
    "raw-clone-newuser": "sys_('clone', %d, 0x10000000 | 17, 0, 0, 0, 0)" % sandbox._CLONE.get(os.uname().machine, -1),
    "raw-io-uring": "sys_('io_uring_setup', %d, 4, ctypes.create_string_buffer(120))" % NR.get("io_uring_setup", -1),
    "raw-kill-all": "attempt('kill -1', lambda: os.kill(-1, 9))\n"
                    "attempt('kill parent', lambda: os.kill(@PARENT@, 0))\n"
                    "attempt('kill canary', lambda: os.kill(@CANARY_ROOT@, 0))",
    "raw-write-anywhere": """
        hits = []
        for d in ('/', '/tmp', '/etc', '/dev', '/dev/shm', '/proc', '/run', '/root', '/usr/lib', '@PREFIX@',
                  '@SENTINEL@', '@REPO@'):
            try:
                with open(os.path.join(d, '@TOKEN@'), 'w') as f:
                    f.write('x')
                hits.append(d)
            except OSError:
                pass
        print('ESCAPED wrote ' + repr(hits) if hits else 'nothing writable')
    """,
    "raw-writable-walk": """
        # Every regular file on a writable mount, but the working folder and the sandbox's own
        # processes in /proc, must refuse to open for writing (read-only mounts refuse by themselves).
        work = os.getcwd()
        rw = [line.split()[4] for line in open('/proc/self/mountinfo') if 'rw' in line.split()[5].split(',')]
        found = []
        for top in rw:
            for root, dirs, files in os.walk(top):
                if root == work or root.startswith(work + '/') or root.startswith(('/proc/self', '/proc/thread-self')):
                    dirs[:] = []
                    continue
                if root == '/proc':
                    dirs[:] = [d for d in dirs if not d.isdigit()]
                found += [os.path.join(root, n) for n in files]
        writable = []
        for p in found:
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
                writable.append(p)
            except OSError:
                pass
        print('ESCAPED writable ' + repr(writable[:10]) if writable else 'no writable file among', len(found), rw)
    """,
    "raw-secrets": """
        import glob
        leaks = [p for p in ('/etc/shadow', '/etc/passwd', '@SENTINEL@/secret.txt', '@REPO@/README.md',
                             '/tmp/.X11-unix')
                 if os.path.exists(p)]
        env = b''.join(open(p, 'rb').read() for p in glob.glob('/proc/[0-9]*/environ') if os.access(p, os.R_OK))
        print('ESCAPED ' + repr(leaks) if leaks or b'@SECRET_VAR@' in env else 'no secrets', sorted(os.listdir('/')))
    """,
    "raw-network": """
        import socket
        attempt('tcp', lambda: socket.create_connection(('127.0.0.1', @TCP_PORT@), timeout=1))
        try:  # may "succeed" into the empty network namespace: the listener outside is the verdict
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', @UDP_PORT@))
        except OSError as e:
            print('refused udp', type(e).__name__)
        attempt('abstract', lambda: socket.socket(socket.AF_UNIX).connect('\\0@ABSTRACT@'))
        attempt('unix path', lambda: socket.socket(socket.AF_UNIX).connect('@UNIX_PATH@'))
    """,
    "raw-uid": """
        st = open('/proc/self/status').read()
        caps = [l for l in st.splitlines() if l.startswith(('CapEff', 'CapPrm', 'Seccomp:', 'NoNewPrivs'))]
        print('uid', os.getuid(), ' | '.join(l.replace('\\t', ' ') for l in caps))
        if os.getuid() == 0 or any(l.startswith(('CapEff', 'CapPrm')) and int(l.split()[1], 16) for l in caps):
            print('ESCAPED privileged')
    """,
}


def _run_unhooked(code: str):
    """``python -I -S -c code`` in the sandbox's bubblewrap jail, without sandbox_child (no audit hook, no
    rlimits but the ones the code sets): what the kernel alone stops."""
    jail, why = sandbox._probe_bubblewrap(LIMITS)
    assert jail is not None, why
    workdir = sandbox._sandbox_workdir()
    status_r, status_w = os.pipe()
    with tempfile.TemporaryFile() as code_file, tempfile.TemporaryFile() as filt:
        filt.write(sandbox.seccomp_filter() or b"")
        filt.seek(0)
        seccomp_fd = filt.fileno() if jail.seccomp else None
        argv = sandbox._bwrap_argv(jail, LIMITS, workdir, code_fd=code_file.fileno(), status_fd=status_w,
                                   seccomp_fd=seccomp_fd,
                                   command=[sandbox._interpreter(), "-I", "-S", "-B", "-c", code])
        fds = tuple(fd for fd in (code_file.fileno(), status_w, seccomp_fd) if fd is not None)
        try:
            proc = subprocess.run(argv, env=sandbox._bwrap_env(), pass_fds=fds, capture_output=True, text=True,
                                  timeout=20, start_new_session=True)
        finally:
            os.close(status_w)
            os.close(status_r)
    return proc


@pytest.mark.parametrize("name", list(RAW_ATTACKS))
def test_os_layer_holds_without_the_hook(name: str, world: World):
    report = _require_bubblewrap()
    before = _snapshot(world.sentinel)
    code = RAW_PRELUDE + textwrap.dedent(RAW_ATTACKS[name])
    for key, value in world.replacements.items():
        code = code.replace(key, value)
    t0 = time.monotonic()
    proc = _run_unhooked(code)
    where = f"{name}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert time.monotonic() - t0 < 20, where
    assert proc.returncode == 0 and proc.stdout.strip(), where  # the program ran to its end
    assert "ESCAPED" not in proc.stdout, where
    assert SECRET not in proc.stdout + proc.stderr, where
    assert _snapshot(world.sentinel) == before, where
    assert _planted(world) == [] and _received(world) == [], where
    assert all(c.poll() is None for c in world.canaries), where
    if name == "raw-uid":
        assert "Seccomp: 2" in proc.stdout or not report["seccomp"], where


def test_unhooked_runner_sees_an_unconfined_step():
    """The raw runner can report success: a harmless syscall that seccomp allows answers >= 0."""
    _require_bubblewrap()
    code = RAW_PRELUDE + "sys_('getpid', 39 if os.uname().machine == 'x86_64' else 172)\n"
    proc = _run_unhooked(code)
    assert proc.returncode == 0 and "ESCAPED getpid" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------------ seccomp tables and program


def _header_numbers(path: str, generic: bool) -> dict[str, int]:
    pattern = r"#define __NR(?:3264)?_(\w+)\s+(\d+)" if generic else r"#define __NR_(\w+)\s+(\d+)"
    with open(path) as f:
        return {name: int(nr) for name, nr in re.findall(pattern, f.read())}


@pytest.mark.parametrize("machine,header,generic", [
    ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", False),
    ("aarch64", "/usr/include/asm-generic/unistd.h", True),
])
def test_syscall_numbers_match_the_kernel_headers(machine, header, generic):
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed")
    numbers = _header_numbers(header, generic)
    table = sandbox._DENIED_SYSCALLS[machine]
    wrong = {name: (nr, numbers.get(name)) for name, nr in table.items() if numbers.get(name) != nr}
    assert wrong == {}
    assert numbers["clone"] == sandbox._CLONE[machine] and numbers["clone3"] == sandbox._CLONE3


def test_seccomp_program_shape():
    for machine in ("x86_64", "aarch64"):
        prog = sandbox.seccomp_filter(machine)
        assert prog is not None and len(prog) % 8 == 0 and len(prog) // 8 < 4096  # the kernel's BPF_MAXINSNS
        last = prog[-8:]
        assert int.from_bytes(last[4:], "little") == sandbox._RET_ALLOW
    assert sandbox.seccomp_filter("sparc64") is None


# ------------------------------------------------------------------- without bubblewrap: refuse or opt in


def test_refuses_without_bubblewrap_unless_opted_in(monkeypatch):
    monkeypatch.delenv(sandbox.ALLOW_WEAK_ENV, raising=False)
    limits = SandboxLimits(cpu_s=1.0, wall_s=2.0, bwrap=NO_BWRAP)
    with pytest.raises(SandboxUnavailableError) as info:
        run_python("print('ran')", limits=limits)
    message = str(info.value)
    assert "\n" not in message and "bubblewrap" in message and NO_BWRAP in message
    assert sandbox.ALLOW_WEAK_ENV in message and "apt-get install bubblewrap" in message
    report = isolation_report(limits)
    assert report["isolation"] == "none" and report["reason"] and report["bwrap"] is None


def test_code_exec_refuses_without_bubblewrap(monkeypatch):
    """code_exec raises (the router then scores 0 and records the one-line reason); nothing runs."""
    from redone_fast.rewards.router import score_completion

    monkeypatch.delenv(sandbox.ALLOW_WEAK_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_find_bwrap", lambda limits: None)
    completion = "```python\nprint(5)\n```"
    with pytest.raises(SandboxUnavailableError):
        code_exec_module.code_exec(completion, "", expected_output="5")
    outcome = score_completion({"name": "code_exec", "params": {"expected_output": "5"}}, "", completion)
    assert outcome.score == 0.0 and outcome.error.startswith("SandboxUnavailableError: cannot run generated code")
    assert "\n" not in outcome.error
    monkeypatch.setenv(sandbox.ALLOW_WEAK_ENV, "1")
    assert code_exec_module.code_exec(completion, "", expected_output="5") == 1.0


@pytest.mark.parametrize("how", ["env", "field"])
def test_weak_isolation_opt_in(how, monkeypatch):
    monkeypatch.delenv(sandbox.ALLOW_WEAK_ENV, raising=False)
    if how == "env":
        monkeypatch.setenv(sandbox.ALLOW_WEAK_ENV, "1")
        limits = SandboxLimits(cpu_s=1.0, wall_s=2.0, bwrap=NO_BWRAP)
    else:
        limits = SandboxLimits(cpu_s=1.0, wall_s=2.0, bwrap=NO_BWRAP, allow_weak_isolation=True)
    result = run_python("import os\nprint(input(), hasattr(os, 'mknod'))", stdin="hello\n", limits=limits)
    assert result.returncode == 0 and result.isolation == "weak", result
    assert result.stdout.split() == ["hello", "False"]
    report = isolation_report(limits)
    assert report["isolation"] == "weak" and "bubblewrap not found" in report["reason"]
    assert report["seccomp"] is False


def test_a_broken_bwrap_is_refused_with_its_own_words(tmp_path, monkeypatch):
    """A bwrap that cannot make namespaces (here: a script that fails like one) is not trusted."""
    monkeypatch.delenv(sandbox.ALLOW_WEAK_ENV, raising=False)
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    limits = SandboxLimits(cpu_s=1.0, wall_s=2.0, bwrap=str(fake))
    with pytest.raises(SandboxUnavailableError, match="No permissions to create new namespace"):
        run_python("print(1)", limits=limits)
    assert isolation_report(limits)["isolation"] == "none"


def test_bubblewrap_report_matches_what_the_child_sees():
    report = _require_bubblewrap()
    assert report["namespaces"][:3] == ["user", "pid", "net"] and "mount" in report["namespaces"]
    code = """
    import os
    print(os.getuid(), os.getgid(), os.getpid())
    print(os.uname().nodename)
    """
    result = run_python(textwrap.dedent(code), limits=LIMITS)
    assert result.returncode == 0, result.stderr
    ids, hostname = result.stdout.split("\n")[:2]
    uid, gid, pid = (int(x) for x in ids.split())
    assert uid == gid == 65534 and pid < 10  # a fresh pid namespace
    assert hostname == "sandbox"
    # The seccomp mode, read without the hook (which refuses /proc/self/status).
    proc = _run_unhooked("print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])")
    assert proc.stdout.strip() == ("2" if report["seccomp"] else "0"), proc.stderr


def test_exit_codes_and_signals_under_bubblewrap():
    _require_bubblewrap()
    assert run_python("import sys\nsys.exit(3)", limits=LIMITS).returncode == 3
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", limits=LIMITS)
    # os.kill of itself is refused by the hook: the program fails normally
    assert result.reason == "blocked"
    result = run_python("import faulthandler\nfaulthandler._sigsegv()", limits=LIMITS)
    assert result.returncode == -signal.SIGSEGV and result.reason == "signal:SIGSEGV" and result.killed
    assert errno.ENOSPC == 28  # the "disk_limit" reason reads [Errno 28]
