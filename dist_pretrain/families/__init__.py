"""Model families: each is a model builder + an objective (forward step and loss) + a collator.

The training loop (``dist_pretrain.train``) is the same for all of them.
"""

from __future__ import annotations

from dist_pretrain.families.base import Family


def get_family(name: str) -> Family:
    if name == "gpt":
        from dist_pretrain.families.gpt import GPTFamily

        return GPTFamily()
    if name == "bert":
        from dist_pretrain.families.bert import BertFamily

        return BertFamily()
    if name == "t5":
        from dist_pretrain.families.t5 import T5Family

        return T5Family()
    raise ValueError(f"unknown model family {name!r}; available: gpt, bert, t5")
