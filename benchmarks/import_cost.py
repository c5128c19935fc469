"""CPU cost of importing the trainer in a fresh interpreter, megatron-core's ``torch.compile``
decorations run at import (``DIST_PRETRAIN_EAGER_COMPILE=1``) vs deferred to first call
(``dist_pretrain.lazy_compile``, the default). Every rank of every launch pays this once.

    python -m benchmarks.import_cost [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys

from dist_pretrain.lazy_compile import EAGER_ENV

CODE = ("import resource, sys, dist_pretrain.train\n"
        "r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(r.ru_utime + r.ru_stime, 'torch._inductor.compile_fx' in sys.modules)\n")


def import_cost(eager: bool) -> tuple[float, bool]:
    """(CPU seconds of ``import dist_pretrain.train``, whether torch's inductor got loaded)."""
    env = {**os.environ, EAGER_ENV: "1" if eager else "0"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CODE], capture_output=True, text=True,
                         check=True, env=env)
    seconds, inductor = out.stdout.split()
    return float(seconds), inductor == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = {True: [], False: []}
    for _ in range(args.repeat):  # interleaved, so a change in machine load hits both
        for eager in (True, False):
            runs[eager].append(import_cost(eager))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; command: python -m benchmarks.import_cost --repeat {args.repeat}")
    print("| torch.compile in megatron-core | CPU-s (median) | runs | inductor loaded |")
    print("|---|---|---|---|")
    for eager, label in ((True, "at import"), (False, "deferred to first call")):
        secs = [s for s, _ in runs[eager]]
        print(f"| {label} | {statistics.median(secs):.2f} | {', '.join(f'{s:.2f}' for s in secs)} | "
              f"{all(i for _, i in runs[eager])} |")
    ratio = statistics.median(s for s, _ in runs[False]) / statistics.median(s for s, _ in runs[True])
    print(f"deferred / at import: {ratio:.2f}")


if __name__ == "__main__":
    main()
