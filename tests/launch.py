"""Start a launcher in its own session and kill its whole process tree afterwards.

torchrun starts every worker in a session of its own, so signalling the launcher's process
group reaches only torchrun: a test that "kills the job" that way leaves the ranks running
(they finish training on their own and slow every later test). ``kill_tree`` signals the
launcher and every descendant, found before any of them dies and is re-parented.
"""

import signal
import subprocess

import psutil


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` and all its descendants. Each process is frozen (SIGSTOP) before its
    children are listed, so none can fork a new one (a checkpoint writer, say) that escapes."""
    frozen: dict[int, psutil.Process] = {}
    todo = []
    try:
        todo.append(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return
    while todo:
        proc = todo.pop()
        if proc.pid in frozen:
            continue
        try:
            proc.suspend()
            frozen[proc.pid] = proc
            todo.extend(proc.children())
        except psutil.NoSuchProcess:
            continue
    for proc in frozen.values():
        try:
            proc.send_signal(sig)
            proc.resume()
        except psutil.NoSuchProcess:
            pass


def run_group(cmd, timeout, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_tree(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
