"""Data path: demo corpus, tokenizers, preprocessing into WebDataset shards, streaming loaders."""
