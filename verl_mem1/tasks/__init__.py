"""Tasks: single-objective QA sources, multi-objective composition into verl parquet, and QA rewards.

``compose`` and ``rewards`` import nothing heavy at module level, so ``verl_mem1.tasks.rewards`` loads fast in
verl's reward workers and ``mem1 compose --help`` stays quick.
"""

from verl_mem1.tasks.compose import (
    ABILITY,
    compose_tasks,
    normalize_question,
    split_items,
    write_tasks_parquet,
)
from verl_mem1.tasks.rewards import (
    AnswerScore,
    compute_score,
    exact_match,
    extract_answer,
    f1_score,
    is_well_formed,
    normalize_answer,
    normalize_ground_truth,
    score_answer,
)
from verl_mem1.tasks.sources import BUNDLED_SOURCES, SOURCE_KINDS, QAItem, bundled_path, load_source

__all__ = [
    "ABILITY",
    "BUNDLED_SOURCES",
    "SOURCE_KINDS",
    "AnswerScore",
    "QAItem",
    "bundled_path",
    "compose_tasks",
    "compute_score",
    "exact_match",
    "extract_answer",
    "f1_score",
    "is_well_formed",
    "load_source",
    "normalize_answer",
    "normalize_ground_truth",
    "normalize_question",
    "score_answer",
    "split_items",
    "write_tasks_parquet",
]
