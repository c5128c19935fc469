"""Command-line tools that sit beside training (equivalence check, ...)."""
