"""``dist-pretrain`` command: train, check, plan, preprocess, tokenizer train, checkpoint, export, import,
generate, evaluate, demo-corpus, sweep, scaling fit.

A ``UserError`` (bad config, data, path, checkpoint or weights) leaves every command as
``error:`` lines and exit status 2, without a traceback (``DIST_PRETRAIN_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import sys

from dist_pretrain.config import load_config
from dist_pretrain.errors import UserError, report_user_error


def _printing(err: UserError, distributed: bool) -> bool:
    """Whether this rank prints ``err``: the rank an agreed error names, else before the process
    groups exist rank 0 (every rank found the same problem), after them the rank that has it."""
    report = getattr(err, "report", None)
    if report is not None:
        return report
    if distributed:
        return True
    from dist_pretrain.runtime import discover_launch_env

    return discover_launch_env().rank == 0


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dist-pretrain train",
                                     description="Pretrain a model (run under torchrun / srun / mpirun)")
    parser.add_argument("config", help="YAML config file (configs/...)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        from dist_pretrain.train import Trainer

        trainer = Trainer(cfg)
    except UserError as err:
        torch = sys.modules.get("torch")
        distributed = torch is not None and torch.distributed.is_initialized()
        code = report_user_error(err, _printing(err, distributed))
        if distributed:
            from dist_pretrain.runtime import shutdown

            shutdown()
        return code
    from dist_pretrain.runtime import shutdown
    from dist_pretrain.faults import StopTraining, TrainingAborted, record_stop

    try:
        trainer.fit()
    except UserError as err:  # found once the process groups exist (data, checkpoints)
        code = report_user_error(err, _printing(err, True))
        shutdown()
        return code
    except TrainingAborted as abort:
        if trainer.rt.is_logging_rank:
            print(f"error: training aborted: {abort}", file=sys.stderr, flush=True)
        shutdown()
        return 1
    except RuntimeError as err:
        if "timed out" not in str(err).lower() and "timeout" not in str(err).lower():
            raise
        env = trainer.rt.env
        print(f"error: rank {env.rank} (local {env.local_rank}, {env.launcher}): a collective waited more than "
              f"parallel.timeout_minutes={cfg.parallel.timeout_minutes} for another rank, which stopped "
              f"participating (hung or dead); {type(err).__name__}: {str(err).splitlines()[0]}",
              file=sys.stderr, flush=True)
        return 1
    except StopTraining as stop:
        if trainer.rt.is_logging_rank:
            print(f"stopping: {stop.reason}; exit {stop.code} (requeue to resume)", flush=True)
        record_stop(stop.code)
        shutdown()
        return stop.code
    shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"train", "check", "preprocess", "demo-corpus", "tokenizer", "checkpoint", "export", "import",
                "generate", "evaluate", "finetune-data", "plan", "sweep", "scaling"}
    if not argv or argv[0] not in commands:
        print(f"usage: dist-pretrain {{{','.join(sorted(commands))}}} ...", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        return _command(cmd, rest)
    except UserError as err:
        return report_user_error(err)


def _command(cmd: str, rest: list[str]) -> int:
    if cmd == "check":
        from dist_pretrain.preflight import main as check_main

        return check_main(rest)
    if cmd == "train":
        return _train(rest)
    if cmd == "plan":
        from dist_pretrain.plan import main as plan_main

        return plan_main(rest)
    if cmd == "preprocess":
        from dist_pretrain.data.preprocess import main as preprocess_main

        preprocess_main(rest)
        return 0
    if cmd == "checkpoint":
        from dist_pretrain.checkpoint import main as checkpoint_main

        return checkpoint_main(rest)
    if cmd == "export":
        from dist_pretrain.interop.hf_export import main as export_main

        return export_main(rest)
    if cmd == "import":
        from dist_pretrain.interop.hf_import import main as import_main

        return import_main(rest)
    if cmd == "generate":
        from dist_pretrain.inference.cli import main as generate_main

        return generate_main(rest)
    if cmd == "evaluate":
        from dist_pretrain.evaluation.cli import main as evaluate_main

        return evaluate_main(rest)
    if cmd == "scaling":
        from dist_pretrain.scaling.cli import main as scaling_main

        return scaling_main(rest)
    if cmd == "sweep":
        from dist_pretrain.scaling.sweep_cli import main as sweep_main

        return sweep_main(rest)
    if cmd == "finetune-data":
        from dist_pretrain.data.finetune_corpus import main as finetune_data_main

        finetune_data_main(rest)
        return 0
    if cmd == "tokenizer":
        if not rest or rest[0] != "train":
            print("usage: dist-pretrain tokenizer train --kind bpe|wordpiece|unigram|sentencepiece ...",
                  file=sys.stderr)
            return 2
        from dist_pretrain.data.train_tokenizer import main as train_tokenizer_main

        train_tokenizer_main(rest[1:])
        return 0
    from dist_pretrain.data.demo_corpus import main as corpus_main

    corpus_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
