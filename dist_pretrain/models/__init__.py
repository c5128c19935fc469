"""Model pieces plugged into megatron-core: SDPA core attention, layer specs, builders."""
