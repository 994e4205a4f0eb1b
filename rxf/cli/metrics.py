"""Classification metrics of the CLI: accuracy and macro-averaged F1.

Example:
    >>> accuracy([0, 1, 1], [0, 1, 0])
    0.6666666666666666
    >>> round(macro_f1([0, 1, 1], [0, 1, 0], num_classes=2), 4)
    0.6667
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Fraction of predictions equal to the label."""
    if len(labels) != len(predictions) or not labels:
        raise ValueError("labels and predictions must be non-empty and of equal length")
    return sum(int(a == b) for a, b in zip(labels, predictions, strict=True)) / len(labels)


def macro_f1(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2·TP / (2·TP + FP + FN); a class that is
    neither present nor predicted scores 0 (as scikit-learn's ``zero_division=0``)."""
    accuracy(labels, predictions)  # same input checks
    scores = []
    for c in range(num_classes):
        tp = sum(1 for a, b in zip(labels, predictions, strict=True) if a == c and b == c)
        fp = sum(1 for a, b in zip(labels, predictions, strict=True) if a != c and b == c)
        fn = sum(1 for a, b in zip(labels, predictions, strict=True) if a == c and b != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / num_classes


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1 in the denominator; 0 for one value)."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
