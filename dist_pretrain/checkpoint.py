"""Distributed checkpoints: one directory per step, reshardable, atomic, verified.

Format (one ``dist_checkpointing`` / torch_dist directory per step): every parameter is
stored under its global megatron key (``decoder.layers.3.mlp.linear_fc1.weight``) with
its TP/PP sharding described by megatron's ``sharded_state_dict``, as fp32 master weights
(``model.*``) with AdamW's moments (``optimizer.exp_avg.*``, ``optimizer.exp_avg_sq.*``)
sharded exactly like the parameter they belong to. The optimizer values come from the
engine (``master_state``: DeepSpeed's ``safe_get_full_*`` APIs gather a parameter's ZeRO
partitions across the data-parallel group; megatron's optimizer holds them whole), so a
checkpoint does not depend on the DP size or ZeRO stage (0 to 3) and loads at any
TP / PP / VPP / DP layout. ``meta.json`` holds the step, the data-stream
position, RNG states, the config and the code version; ``manifest.json`` the sha256 of
every file.

Writing: into ``tmp-step-N``, fsync'd, checksummed, then renamed to ``step-N`` and
``latest`` (a one-line file) replaced atomically; old checkpoints are pruned only after
that (keep the last ``checkpoint.keep`` and every ``checkpoint.keep_every``-th step). A
failed save (disk full...) leaves the previous checkpoints and ``latest`` untouched.
Loading verifies the checksums first and falls back to the newest good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from torch.distributed.checkpoint.api import CheckpointException as TorchCheckpointException  # a BaseException

from dist_pretrain.checkpoint_files import (  # noqa: F401 - CheckpointError, verify... are part of this API
    CheckpointError,
    find_resumable,
    sha256_file,
    step_dirs,
    verify,
)
from dist_pretrain.checkpoint_shards import parameter_shape, parameter_shards
from dist_pretrain.faults import fault_lost_checkpoint_steps, fault_slow_save_seconds, slowed

MOMENTS = ("exp_avg", "exp_avg_sq")


# --------------------------------------------------------------------------- sharded tensors


def _slot(kind: str, st: ShardedTensor) -> str:
    """Dict key of one local shard: megatron stacks all layers of a block under one tensor
    key (offset by layer), so the key alone is not unique."""
    return f"{kind}/{st.key}/{st.global_offset}"


def _sharded(st: ShardedTensor, prefix: str, data: torch.Tensor) -> ShardedTensor:
    return dataclasses.replace(st, key=f"{prefix}.{st.key}", data=data, dtype=data.dtype)


def training_state_dict(engine, chunks) -> dict[str, ShardedTensor]:
    """fp32 master weights and AdamW moments of every local parameter, sharded like it."""
    state = {}
    for p, st in parameter_shards(chunks):
        master, moments = engine.master_state(p)
        state[_slot("model", st)] = _sharded(st, "model", master.float().reshape(st.local_shape).contiguous())
        for moment in MOMENTS:
            value = moments[moment]
            if value is None:  # no optimizer step yet
                value = torch.zeros(st.local_shape, dtype=torch.float32, device=master.device)
            state[_slot(moment, st)] = _sharded(st, f"optimizer.{moment}",
                                                value.float().reshape(st.local_shape).contiguous())
    return state


def load_training_state(engine, chunks, directory: Path, step: int) -> None:
    shards = parameter_shards(chunks)
    template = {}
    for p, st in shards:
        for kind, prefix in [("model", "model")] + [(m, f"optimizer.{m}") for m in MOMENTS]:
            template[_slot(kind, st)] = _sharded(st, prefix, torch.empty(st.local_shape, dtype=torch.float32))
    loaded = dist_checkpointing.load(template, str(directory))
    with torch.no_grad():
        engine.load_master_state([(p, loaded[_slot("model", st)].reshape(parameter_shape(p)),
                                   {m: loaded[_slot(m, st)].reshape(parameter_shape(p)) for m in MOMENTS})
                                  for p, st in shards], step)


# --------------------------------------------------------------------------- files


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _code_version() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _rng_state() -> dict:
    """This rank's generators: Python, NumPy, torch (CPU, CUDA) and megatron's model-parallel
    tracker, whose per-TP-rank states draw dropout masks."""
    from megatron.core import tensor_parallel

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state().tolist(),
             "tracker": {k: v.tolist() for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def _gather_rng_states() -> list[dict] | None:
    """Every rank's generators, on rank 0 (None elsewhere)."""
    rank0 = torch.distributed.get_rank() == 0
    states = [None] * torch.distributed.get_world_size() if rank0 else None
    torch.distributed.gather_object(_rng_state(), states, dst=0)
    return states


def _restore_rng(meta: dict, layout_now: dict) -> None:
    """Each rank resumes its own generators when the layout is unchanged; at another layout
    ranks play other roles, so all take rank 0's and keep the freshly seeded tracker."""
    from megatron.core import tensor_parallel

    states = meta["rng"]
    same = meta["layout"] == layout_now and len(states) == torch.distributed.get_world_size()
    rng = states[torch.distributed.get_rank()] if same else states[0]
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    if same and torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(torch.tensor(rng["cuda"], dtype=torch.uint8))
    if same:
        tensor_parallel.get_cuda_rng_tracker().set_states(
            {k: torch.tensor(v, dtype=torch.uint8) for k, v in rng["tracker"].items()})


# --------------------------------------------------------------------------- save / load


class Checkpointer:
    """Saves the trainer's checkpoints, synchronously or with the files written in the background.

    Either way the state is gathered on every rank first (ZeRO partitions are collected
    over DP), so the checkpoint is the state after step N. With ``checkpoint.async_save``:

    1. megatron-core's ``AsyncCallsQueue`` forks a writer process per rank. The fork is a
       copy-on-write snapshot, so training goes on changing the weights without touching
       what is being written.
    2. ``poll()`` at every step boundary (one all-reduce while a save is in flight) runs
       megatron's finalization once every rank's writer is done (the global metadata).
    3. Rank 0 then seals the directory in a thread (checksums, fsync, rename, ``latest``,
       pruning: file work that releases the GIL), and a later ``poll()`` tells every rank
       how that went.

    ``latest`` moves only when all of it succeeded, so a run killed mid-write resumes from
    the previous checkpoint. One save is in flight at a time; a failure raises
    ``CheckpointError`` on every rank at a step boundary.
    """

    def __init__(self, trainer):
        from megatron.core.dist_checkpointing.strategies.async_utils import (
            AsyncCallsQueue,
        )

        self.trainer = trainer
        self.cfg = trainer.cfg.checkpoint
        self.root = Path(trainer.cfg.run_dir) / "checkpoints"
        self.queue = AsyncCallsQueue() if self.cfg.async_save else None
        self.writing: tuple[int, dict | None] | None = None  # (step, meta) while files are written
        self.sealing: int | None = None  # step whose directory rank 0 is sealing
        self._sealer: threading.Thread | None = None
        self._seal_error: Exception | None = None

    @property
    def in_flight(self) -> bool:
        return self.writing is not None or self.sealing is not None

    def save(self, step: int, block: bool = False) -> float:
        """Checkpoint ``step`` (all ranks call this); returns the seconds training stalled."""
        t0 = time.perf_counter()
        self.poll(block=True)
        tmp = self.root / f"tmp-step-{step:08d}"
        background = self.queue is not None and not block

        def write():
            if torch.distributed.get_rank() == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            torch.distributed.barrier()
            state = training_state_dict(self.trainer.engine, self.trainer.engine.model_chunks)
            rngs = _gather_rng_states()
            meta = _meta(self.trainer, step, rngs) if torch.distributed.get_rank() == 0 else None
            slow = fault_slow_save_seconds()
            if not background:
                slowed(dist_checkpointing.save, slow)(state, str(tmp))
                return meta
            request = dist_checkpointing.save(state, str(tmp), async_sharded_save=True)
            if slow:  # the forked writer is the slow one
                request = request._replace(async_fn=slowed(request.async_fn, slow))
            self.queue.schedule_async_request(request)
            self.writing = (step, meta)
            return meta

        meta = _guarded(step, tmp, write)
        if step in fault_lost_checkpoint_steps() and torch.distributed.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if not background:
            _guarded(step, tmp, lambda: self._seal(step, meta) if torch.distributed.get_rank() == 0 else None)
            torch.distributed.barrier()
        return time.perf_counter() - t0

    def poll(self, block: bool = False) -> float:
        """Move a background save along (all ranks call this); returns the seconds it took."""
        t0 = time.perf_counter()
        if self.writing is not None:
            step, meta = self.writing
            try:
                done = self.queue.maybe_finalize_async_calls(blocking=block)
            except (Exception, TorchCheckpointException) as err:  # noqa: BLE001 - a failed write, on every rank
                self.writing = None
                _give_up(step, self.root / f"tmp-step-{step:08d}", err)
            if done:
                self.writing, self.sealing = None, step
                if torch.distributed.get_rank() == 0:
                    self._sealer = threading.Thread(target=self._seal_quietly, args=(step, meta), daemon=True)
                    self._sealer.start()
        if self.sealing is not None:
            status = torch.zeros(2)  # rank 0: [sealed, failed]
            if self._sealer is not None:
                if block:
                    self._sealer.join()
                status[0] = float(not self._sealer.is_alive())
                status[1] = float(self._seal_error is not None)
            torch.distributed.broadcast(status, src=0)
            if status[0]:
                step, self.sealing, self._sealer = self.sealing, None, None
                if status[1]:
                    _give_up(step, self.root / f"tmp-step-{step:08d}", self._seal_error)
        return time.perf_counter() - t0

    def _seal_quietly(self, step: int, meta: dict) -> None:
        self._seal_error = None
        try:
            self._seal(step, meta)
        except Exception as err:  # noqa: BLE001 - reported by poll() on every rank
            self._seal_error = err

    def _seal(self, step: int, meta: dict) -> None:
        """Rank 0 turns ``tmp-step-N`` into ``step-N``: meta, checksums, fsync, rename, ``latest``, prune."""
        tmp, final = self.root / f"tmp-step-{step:08d}", self.root / f"step-{step:08d}"
        (tmp / "meta.json").write_text(json.dumps(meta))
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "manifest.json").write_text(json.dumps({"step": step, "files": files}, indent=1))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(self.root / "latest", final.name + "\n")
        prune(self.root, self.cfg.keep, self.cfg.keep_every)
        print(f"saved checkpoint {final}", flush=True)


def _layout(trainer) -> dict:
    rt = trainer.rt
    return {"tp": rt.tp, "pp": rt.pp, "vpp": rt.vpp, "dp": rt.dp, "zero_stage": trainer.cfg.parallel.zero_stage}


def _meta(trainer, step: int, rngs: list[dict]) -> dict:
    """What a resumed run needs besides the tensors, as of the end of ``step``."""
    return {"step": step, "data": trainer.data_state(), "config": trainer.cfg.model_dump(),
            "code_version": _code_version(), "layout": _layout(trainer), "rng": rngs,
            "skipped_steps": getattr(trainer, "skipped_steps", 0)}


def _guarded(step: int, tmp: Path, fn):
    """Run one collective phase of a save; if it fails on any rank, every rank raises
    ``CheckpointError`` together (no rank left waiting) and the partial files go."""
    ok = torch.ones(1)
    result = error = None
    try:
        result = fn()
    except (Exception, TorchCheckpointException) as err:  # noqa: BLE001 - reported below, on every rank
        ok.zero_()
        error = err
    torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    if not ok.item():
        _give_up(step, tmp, error)
    return result


def _give_up(step: int, tmp: Path, err: Exception | None) -> None:
    if torch.distributed.get_rank() == 0:
        why = f" ({type(err).__name__}: {err})" if err is not None else " (on another rank)"
        print(f"error: saving checkpoint step {step} failed{why}; "
              f"the previous checkpoints and 'latest' are untouched", flush=True)
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
    failed = CheckpointError(f"checkpoint of step {step} was not written; previous checkpoints kept")
    failed.report = False  # raised on every rank together; rank 0 printed the reason above
    raise failed


def prune(root: Path, keep: int, keep_every: int) -> None:
    """Delete old checkpoints: keep the newest ``keep``, every ``keep_every``-th step and the
    one ``root/best`` names (fine-tuning's best validation result)."""
    steps = step_dirs(root)
    newest = {s for s, _ in steps[-keep:]} if keep > 0 else {s for s, _ in steps}
    best = (root / "best").read_text().strip() if (root / "best").is_file() else None
    for s, path in steps:
        if s in newest or (keep_every and s % keep_every == 0) or path.name == best:
            continue
        shutil.rmtree(path, ignore_errors=True)


def load(trainer, directory: Path) -> dict[str, Any]:
    """Restore weights, optimizer state and RNG from ``directory``; returns its meta.json."""
    meta = json.loads((directory / "meta.json").read_text())
    load_training_state(trainer.engine, trainer.engine.model_chunks, directory, meta["step"])
    _restore_rng(meta, _layout(trainer))
    return meta


def resume_point(run_dir: str) -> tuple[Path | None, list[str]]:
    """Rank 0 picks the checkpoint (verifying checksums) and tells every rank."""
    choice: list[Any] = [None, []]
    if torch.distributed.get_rank() == 0:
        path, warnings = find_resumable(Path(run_dir) / "checkpoints")
        choice = [str(path) if path else None, warnings]
    torch.distributed.broadcast_object_list(choice, src=0)
    return (Path(choice[0]) if choice[0] else None), choice[1]


# --------------------------------------------------------------------------- CLI


def consolidate(directory: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) fp32 weights of a checkpoint, keyed by megatron's global names."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(directory), str(out))
        full = torch.load(out, weights_only=True)
    return {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="dist-pretrain checkpoint")
    sub = parser.add_subparsers(dest="cmd", required=True)
    inspect = sub.add_parser("inspect", help="layout, step, tokens, sizes, checksum status")
    inspect.add_argument("dir")
    convert = sub.add_parser("convert", help="to one consolidated fp32 state dict (torch.save)")
    convert.add_argument("dir")
    convert.add_argument("output")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    if (directory / "checkpoints").is_dir():  # a run directory: its checkpoint to resume from
        directory, warnings = find_resumable(directory / "checkpoints")
        for warning in warnings:
            print(f"warning: {warning}")
        if directory is None:
            print(f"no usable checkpoint under {args.dir}")
            return 1
    problem = verify(directory)
    if args.cmd == "inspect":
        meta = json.loads((directory / "meta.json").read_text()) if (directory / "meta.json").is_file() else {}
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        cfg = meta.get("config", {})
        tokens = meta.get("step", 0) * cfg.get("train", {}).get("global_batch_size", 0) * \
            cfg.get("model", {}).get("seq_length", 0)
        print(f"checkpoint   {directory}")
        print(f"step         {meta.get('step')}   (data stream at global step {meta.get('data', {}).get('step')})")
        print(f"tokens       {tokens:,} (step x global batch x seq length)")
        arch = cfg.get("model", {}).get("arch", cfg.get("family"))  # family: saved before the task split
        print(f"arch, task   {arch}, {cfg.get('task', {}).get('name', '-')}   layout at save: {meta.get('layout')}")
        print(f"code         {meta.get('code_version')}")
        print(f"files        {len(files)}, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB")
        print(f"checksums    {'ok' if problem is None else 'BAD: ' + problem}")
        return 0 if problem is None else 1
    if problem:
        print(f"error: {directory}: {problem}")
        return 1
    state = consolidate(directory)
    torch.save(state, args.output)
    print(f"wrote {args.output}: {len(state)} tensors, "
          f"{sum(t.numel() for t in state.values()):,} parameters (fp32)")
    return 0
