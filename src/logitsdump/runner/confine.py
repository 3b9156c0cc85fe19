"""The child side of the sandbox (`sandbox.py` starts it): confine this process, then run the untrusted code.

`python -I -B -m logitsdump.runner.confine CONFIG_JSON (script.py | program args...)`. In this order:
1. the kernel kills us when our parent (the evaluation) dies (`PR_SET_PDEATHSIG`);
2. with `confine` (a boundary): new user, network, PID, IPC and UTS namespaces (`unshare`): no network
   interface but a loopback that is down, no process outside visible or signalable, its own process count;
   we fork, and the child, process 1 of the new PID namespace (when it ends, the kernel kills every
   process left in it), goes on while we wait and pass its status up;
3. its own session (a signal to "my process group" reaches only the sandbox), no capabilities, no new
   privileges (`PR_SET_NO_NEW_PRIVS`: no setuid program or file capability gains anything);
4. Landlock: reading and executing only below the system folders, the Python installation and the tool
   folders named in CONFIG, writing only below the work folder (and CONFIG's extra writable folders),
   TCP bind and connect denied, signals and abstract Unix sockets scoped to the sandbox (ABI >= 4 / 6);
5. resource limits: address space, CPU seconds, file size, processes (RLIMIT_NPROC, counted in the new
   user namespace; root, whom Linux exempts from it, was put in a pids cgroup by the parent before step 1),
   open files; then the script runs (`runpy`) or the program replaces us (`execv`).
A step that fails exits with status `FAILED` and one line on stderr: a sandbox never runs code half-confined.
Everything here is the standard library and ctypes: this runs before the code and must stay small.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

#: Exit status of a bootstrap that could not set up the sandbox (the code did not run).
FAILED = 125
#: What a successful probe prints (`sandbox.boundary`).
PROBE_OK = "logitsdump-sandbox-ok"

_CLONE_NEWUTS, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = (
    0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
#: Landlock's file-system rights, by bit: execute, write, read file, read dir, remove dir, remove file,
#: make char, make dir, make reg, make sock, make fifo, make block, make sym (ABI 1), refer (2), truncate (3),
#: ioctl_dev (5).
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def fail(step: str) -> None:
    """One line on stderr and exit `FAILED` (the errno of the last C call, when there is one)."""
    code = ctypes.get_errno()
    reason = f": {os.strerror(code)}" if code else ""
    os.write(2, f"logitsdump sandbox: {step} failed{reason}\n".encode())
    os._exit(FAILED)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    version = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(0, version)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_namespaces() -> None:
    """New user, network, PID, IPC and UTS namespaces, our uid and gid mapped (to 1000 for root)."""
    uid, gid = os.geteuid(), os.getegid()
    ctypes.set_errno(0)
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS) != 0:
        fail("unshare (user namespaces)")
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid or 1000} {uid} 1")
        _write("/proc/self/gid_map", f"{gid or 1000} {gid} 1")
    except OSError as err:
        os.write(2, f"logitsdump sandbox: mapping the user ids failed: {err.strerror}\n".encode())
        os._exit(FAILED)


def become_init_of_namespace() -> None:
    """Fork: the child returns as process 1 of the new PID namespace; we wait and exit as it did."""
    pid = os.fork()
    if pid == 0:
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            fail("prctl(PR_SET_PDEATHSIG)")
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signal.SIGKILL))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(FAILED)
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else FAILED)


def drop_privileges() -> None:
    """No capabilities (also none regained at exec) and no new privileges."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        fail("capset")
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail("prctl(PR_SET_NO_NEW_PRIVS)")


def restrict_files(read: Sequence[str], write: Sequence[str], files: Sequence[str], abi: int) -> None:
    """Landlock: read/execute below `read`, everything below `write`, read and write the files `files`
    (e.g. /dev/null); TCP and, from ABI 6, signals and abstract Unix sockets confined to the sandbox."""
    if abi < 1:
        fail("Landlock (not in this kernel)")
    full = (1 << 13) - 1
    if abi >= 2:
        full |= 1 << 13
    if abi >= 3:
        full |= _FS_TRUNCATE
    if abi >= 5:
        full |= _FS_IOCTL_DEV
    attr = _RulesetAttr(full, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        fail("landlock_create_ruleset")
    file_rights = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (full & (_FS_TRUNCATE | _FS_IOCTL_DEV))
    rules = ([(p, _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR) for p in read] + [(p, full) for p in write]
             + [(p, file_rights & ~_FS_EXECUTE) for p in files])
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a folder this system does not have
        if not os.path.isdir(path):
            rights &= file_rights
        rule = _PathBeneathAttr(rights, fd)
        if _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            fail(f"landlock_add_rule({path})")
        os.close(fd)
    if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        fail("landlock_restrict_self")
    os.close(ruleset)


def set_limits(limits: dict[str, int]) -> None:
    """Lower each limit (never above the hard limit already set): -1 leaves one as it is."""
    for name, value in limits.items():
        if value < 0:
            continue
        kind = getattr(resource, name)
        try:
            _soft, hard = resource.getrlimit(kind)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            fail(f"setrlimit({name})")


def confine(config: dict[str, Any]) -> None:
    """Steps 1 to 5 of the module docstring for this process (returns in the confined child)."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        fail("prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != config["parent"]:  # the evaluation is already gone
        os._exit(FAILED)
    if config.get("cgroup"):  # root: the processes are capped by a pids cgroup (RLIMIT_NPROC exempts root)
        try:
            _write(os.path.join(config["cgroup"], "cgroup.procs"), str(os.getpid()))
        except OSError as err:
            os.write(2, f"logitsdump sandbox: joining the pids cgroup failed: {err.strerror}\n".encode())
            os._exit(FAILED)
    if config["confine"]:
        abi = landlock_abi()
        if abi < 1:
            fail("Landlock (not in this kernel)")
        enter_namespaces()
        become_init_of_namespace()
        os.setsid()
        drop_privileges()
        restrict_files(config["read"], config["write"], config["files"], abi)
    elif os.getpid() != os.getsid(0):
        os.setsid()
    set_limits(config["limits"])


def main(argv: Sequence[str]) -> None:
    config = json.loads(argv[0])
    confine(config)
    if config["mode"] == "probe":
        print(PROBE_OK, flush=True)
        os._exit(0)
    if config["mode"] == "python":
        import runpy

        sys.argv = [argv[1]]
        runpy.run_path(argv[1], run_name="__main__")
        return
    try:
        os.execv(argv[1], list(argv[1:]))
    except OSError as err:
        os.write(2, f"logitsdump sandbox: cannot run {argv[1]}: {err.strerror}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
