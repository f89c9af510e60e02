"""Which candidates the grids show: a seeded sample stratified by class and decision, and the borderline cases.

A run of a million candidates cannot be shown whole; the grids show at most a fixed number of cards, spread evenly
over the classes (classes themselves sampled when there are more of them than cards), each class's cards drawn at
random with a seed. The same OUT and seed give the same cards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def stratified_sample(table: pd.DataFrame, total: int, seed: int) -> pd.DataFrame:
    """Up to ``total`` rows of ``table``, spread evenly over its ``class_folder`` values, seeded.

    Each class gets ``total // classes`` rows (the remainder goes to the first classes in a seeded order); a class
    with fewer rows gives what it has, and the others fill its share in turn. With more classes than ``total``,
    ``total`` classes are drawn and each gives one row.

    Returns:
        The chosen rows, in the order of ``table``.
    """
    if total <= 0 or table.empty:
        return table.iloc[:0]
    rng = np.random.default_rng(seed)
    groups = {cls: np.asarray(idx) for cls, idx in table.groupby("class_folder", sort=True).indices.items()}
    order = sorted(groups)
    order = [order[i] for i in rng.permutation(len(order))]
    shuffled = {cls: groups[cls][rng.permutation(len(groups[cls]))] for cls in order}
    quota = dict.fromkeys(order, 0)
    left = total
    while left > 0:  # round-robin: one more row for each class that has one, until `total` or no rows are left
        took = False
        for cls in order:
            if left and quota[cls] < len(shuffled[cls]):
                quota[cls] += 1
                left -= 1
                took = True
        if not took:
            break
    chosen = np.concatenate([shuffled[cls][: quota[cls]] for cls in order]) if order else np.zeros(0, dtype=int)
    return table.iloc[np.sort(chosen)]


def borderline(decided: pd.DataFrame, per_side: int) -> pd.DataFrame:
    """The ``per_side`` kept candidates with the lowest scores, then the ``per_side`` rejected ones with the highest,
    highest score first: the threshold falls between the two halves.

    Args:
        decided: candidates with a ``score`` and a boolean ``accepted`` column (the filter's decision).
    """
    kept = decided[decided.accepted].sort_values(["score", "key"], kind="stable").head(per_side)
    rejected = decided[~decided.accepted]
    below = rejected.sort_values(["score", "key"], ascending=[False, True], kind="stable").head(per_side)
    return _concat(kept.iloc[::-1], below)


def _concat(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return pd.concat([first, second]) if len(first) and len(second) else (first if len(first) else second)
