"""Task families, dataset adapters, offline synthetic generators, scorers and the ``prep`` stage.

The seams other parts use (see docs/CONTRACTS.md, Data)::

    task = get_task("synthetic_math")            # or task_of(dataset_uri)
    text = task.prompt(example, tokenizer)       # chat template when the tokenizer has one
    score = task.score(example, response)        # Score(reward in [0, 1], parsed, reason)
    rows = load_split(dataset_uri, "train")      # list[Example]
"""

from dg_core.data.artifact import load_split, read_dataset_manifest, task_of, with_task_budget
from dg_core.data.example import Example, Score
from dg_core.data.tasks import RowError, Task, get_task, register_task, task_names

__all__ = [
    "Example",
    "RowError",
    "Score",
    "Task",
    "get_task",
    "load_split",
    "read_dataset_manifest",
    "register_task",
    "task_names",
    "task_of",
    "with_task_budget",
]
