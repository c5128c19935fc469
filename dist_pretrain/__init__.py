"""dist_pretrain: GPT, BERT and T5 pretraining on megatron-core TP/PP with DeepSpeed ZeRO."""

from dist_pretrain import lazy_compile

lazy_compile.install()  # every rank imports megatron-core: skip loading torch's compiler for nothing
