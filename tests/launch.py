"""Start a launcher in its own session and kill its whole process tree afterwards.

torchrun starts every worker in a session of its own, so signalling the launcher's process
group reaches only torchrun: a test that "kills the job" that way leaves the ranks running
(they finish training on their own and slow every later test). ``kill_tree`` signals the
launcher and every descendant, collected before any of them dies and is re-parented.
"""

import signal
import subprocess

import psutil


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(sig)
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
