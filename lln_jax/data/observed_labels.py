"""The weak-label protocol and the train/val split (SPEC.md section 4), in numpy.

Both reproduce the official code's random streams bit for bit, so that the observed-label
table and the split equal the official label files. The table is sampled once per split
and then looked up by example id; nothing here is re-sampled during training.
"""

import numpy as np

OBSERVED_SEED = 1200
SPLIT_SEED = 1200


def validate_labels_true(labels_true: np.ndarray) -> np.ndarray:
    """Checks that `labels_true` is an `[N, C]` matrix in {0, 1} and returns it as int8."""
    labels_true = np.asarray(labels_true)
    if labels_true.ndim != 2:
        raise ValueError(f"labels_true must be [N, C], got shape {labels_true.shape}")
    bad = ~np.isin(labels_true, (0, 1))
    if bad.any():
        raise ValueError(f"labels_true must be in {{0, 1}}; found {np.unique(labels_true[bad])}")
    return labels_true.astype(np.int8)


def single_positive(labels_true: np.ndarray, seed: int = OBSERVED_SEED) -> np.ndarray:
    """Observes one positive per image, chosen as the official code chooses it.

    One `RandomState(seed)` walks the rows in order; for each row it shuffles the ascending
    indices of its positives and keeps the first, then shuffles the indices of its negatives
    and keeps none. The second shuffle observes nothing but consumes random numbers, which
    changes the choice in later rows, so it is kept.

    Args:
      labels_true: `[N, C]` true labels in {0, 1}, in the split file's row order.
      seed: the seed of the official label files (1200).

    Returns:
      `[N, C]` int8 observed labels: +1 for the kept positive, 0 elsewhere (an image with
      no positive is all-unobserved).
    """
    labels_true = validate_labels_true(labels_true)
    rng = np.random.RandomState(seed)
    labels_obs = np.zeros_like(labels_true)
    for row, labels in enumerate(labels_true):
        positives = np.flatnonzero(labels == 1)
        rng.shuffle(positives)
        if positives.size:
            labels_obs[row, positives[0]] = 1
        negatives = np.flatnonzero(labels == 0)
        rng.shuffle(negatives)
    return labels_obs


def fully_observed(labels_true: np.ndarray) -> np.ndarray:
    """The full-label setting: every entry observed, positives +1 and negatives -1."""
    return (2 * validate_labels_true(labels_true) - 1).astype(np.int8)


def train_val_split(
    num_examples: int, val_frac: float = 0.2, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Cuts the official train split into train and val row indices, as the official code.

    `n_val = round(val_frac * N)`; `perm = RandomState(seed).permutation(N)`; train is the
    sorted first `N - n_val` of `perm`, val the sorted rest.

    Returns:
      `(train_rows, val_rows)`, sorted int64 arrays that partition `range(num_examples)`.
    """
    if num_examples < 0 or not 0.0 <= val_frac <= 1.0:
        raise ValueError(
            f"need num_examples >= 0 and val_frac in [0, 1]: {num_examples}, {val_frac}"
        )
    num_val = round(val_frac * num_examples)
    perm = np.random.RandomState(seed).permutation(num_examples)
    num_train = num_examples - num_val
    return np.sort(perm[:num_train]), np.sort(perm[num_train:])
