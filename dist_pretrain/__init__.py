"""dist_pretrain: GPT, BERT and T5 pretraining on megatron-core TP/PP with DeepSpeed ZeRO."""
