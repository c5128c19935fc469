"""Our checkpoints to and from HuggingFace ``transformers``: weight maps, export, import, verification."""
