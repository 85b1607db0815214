"""Evaluation: run episodes, score them, and measure accuracy and efficiency (peak tokens, dependency, time)."""
