"""Where a training run starts: a checkpoint's full state, another run's weights, or the seed.

* ``checkpoint.resume`` (``auto``: the newest good checkpoint in ``run_dir``) restores
  everything: weights, optimizer, step, RNG and the data stream's position.
* ``checkpoint.init_from`` loads weights only (fine-tuning a pretrained model): the optimizer,
  step, RNG and data start fresh, and a fine-tuning task's new head keeps its seed values.

Every rank reaches the same verdict (``errors.agree``), so a bad checkpoint stops all of them
with one message instead of leaving some waiting in a collective. ``checkpoint`` is imported
where it is used, as before the split: importing the training loop stays light.
"""

from __future__ import annotations

from pathlib import Path

from dist_pretrain.config import Config
from dist_pretrain.errors import agree
from dist_pretrain.runtime import Runtime


def resume_path(cfg: Config, rt: Runtime) -> Path | None:
    """The checkpoint to resume from: the newest good one in run_dir (or checkpoint.resume)."""
    from dist_pretrain import checkpoint

    how = cfg.checkpoint.resume
    if how == "none":
        return None
    if how == "auto":
        path, warnings = checkpoint.resume_point(cfg.run_dir)
    else:
        path, warnings = Path(how), []

        def verified():  # rank 0 reads the files; every rank learns the verdict
            problem = checkpoint.verify(path) if rt.env.rank == 0 else None
            if problem:
                raise checkpoint.CheckpointError(f"checkpoint.resume={how} is not a usable checkpoint: {problem}")

        agree(verified, "resume")
    if rt.is_logging_rank:
        for warning in warnings:
            print(f"warning: {warning}", flush=True)
    return path


def init_weights_from(cfg: Config, arch, chunks, rt: Runtime) -> None:
    """checkpoint.init_from: weights only, before the engine copies them into its fp32
    masters; the optimizer, step, RNG and data stream start fresh."""
    from dist_pretrain.models.load import load_weights

    ck = cfg.checkpoint
    new_head = list(arch.head_parameter_names(cfg))  # a fine-tuning task's new layers
    dropped = ["lm_head.*", "output_layer.*", "binary_head.*"] if new_head else []  # pretraining heads
    kept = load_weights(chunks, ck.init_from, ck.init_allow_missing + new_head, ck.init_allow_unexpected + dropped)
    if rt.is_logging_rank:
        note = f"; kept initial values (seed {cfg.seed}) of {', '.join(kept)}" if kept else ""
        print(f"initialized weights from {ck.init_from} (weights only, step 0){note}", flush=True)


def restore(trainer, path: Path | None) -> tuple[int, int]:
    """Restore the trainer's full state from ``path`` (if any); returns (step, skipped steps)."""
    if path is None:
        return 0, 0
    meta = agree(lambda: load_into(trainer, path), "resume")
    if trainer.selection is not None:
        trainer.selection.load_state_dict(meta.get("data", {}).get("selection"))
    if trainer.rt.is_logging_rank:
        was = meta["layout"]
        print(f"resumed from {path} (step {meta['step']}; saved at TP {was['tp']} PP {was['pp']} "
              f"DP {was['dp']} ZeRO-{was['zero_stage']})", flush=True)
    return int(meta["step"]), int(meta.get("skipped_steps", 0))


def load_into(trainer, path: Path) -> dict:
    """``checkpoint.load``, with any failure but a ``CheckpointError`` reported as a checkpoint
    that does not fit this model (another architecture or size)."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    from dist_pretrain import checkpoint

    try:
        return checkpoint.load(trainer, path)
    except checkpoint.CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - a checkpoint of another model
        raise checkpoint.CheckpointError(f"checkpoint {path} does not load into this model "
                                         f"({type(err).__name__}: {str(err).splitlines()[0][:300]})") from err
