"""The task registry: every task a sample may carry, whether it is in-domain (SNS) or general, and the
reward it is scored with by default. A plain dict literal (docs/design.md, "Conventions": no registries where a dict
does). Loaders reject tasks not listed here unless told otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    domain: str  # "sns" or "general"
    reward: dict = field(default_factory=lambda: {"name": "exact_match"})
    description: str = ""


TASKS: dict[str, Task] = {
    # The bundled corpus (redone_fast/data/corpus.py): SNS-style tasks
    "note_taxonomy": Task("sns", {"name": "exact_match", "params": {"single": True}},
                          "pick a note's category from candidates"),
    "hashtag_choice": Task("sns", {"name": "exact_match", "params": {"single": True}},
                           "pick the hashtag that fits a note"),
    "query_relevance": Task("sns", {"name": "exact_match", "params": {"single": True}},
                            "rate query-note relevance 0-3"),
    "entity_extraction": Task("sns", {"name": "set_f1"}, "list the entities of a type in a note"),
    "slang_translation": Task("sns", {"name": "chrf"}, "translate slang and emoji into plain words"),
    # ... held out of training, for out-of-domain checks
    "comment_sentiment": Task("sns", {"name": "exact_match", "params": {"single": True}},
                              "held-out: a comment's sentiment"),
    # The bundled corpus: general tasks (forgetting is measured on these)
    "arithmetic": Task("general", {"name": "exact_match"}, "small sums and products"),
    "copying": Task("general", {"name": "exact_match"}, "repeat a string exactly"),
    "simple_qa": Task("general", {"name": "exact_match"}, "short factual questions from a fixed table"),
    # SNS-Bench (the benchmark's 12 JSON files, read by redone_fast/data/sns_bench.py): one task per file.
    # These are per-sample training rewards; the benchmark's own file scores are rewards/sns_bench.py.
    "sns_bench/Note-Taxonomy-single": Task("sns", {"name": "exact_match", "params": {"single": True}}),
    # "primary | secondary | tertiary": SNS-Bench scores the whole path by exact match; set F1 over the
    # levels split on "|" gives credit per level, a denser training signal.
    "sns_bench/Note-Taxonomy-multiple": Task("sns", {"name": "set_f1", "params": {"separator": "|"}}),
    "sns_bench/Note-Hashtag-single": Task("sns", {"name": "exact_match", "params": {"single": True}}),
    "sns_bench/Note-Hashtag-multiple": Task("sns", {"name": "set_f1"}),
    "sns_bench/Note-QueryCorr-topic": Task("sns", {"name": "exact_match", "params": {"single": True}}),
    "sns_bench/Note-QueryCorr-explain": Task("sns", {"name": "exact_match", "params": {"single": True}}),
    "sns_bench/Note-MRC-simple": Task("sns", {"name": "rouge"}),
    "sns_bench/Note-MRC-complex": Task("sns", {"name": "set_f1", "params": {"item_key": "Option"}}),
    "sns_bench/Note-NER": Task("sns", {"name": "set_f1"}),
    "sns_bench/Note-Gender": Task("sns", {"name": "exact_match", "params": {"single": True}}),
    "sns_bench/Note-CHLW": Task("sns", {"name": "set_f1"}),
    "sns_bench/Note-QueryGen": Task("sns", {"name": "rouge"}),
}
