"""Zero- and few-shot evaluation with lm-evaluation-harness semantics: log-likelihood scoring,
few-shot prompts, tasks (built-in and JSONL files), metrics with intervals."""
