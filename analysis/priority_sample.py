"""Dataset mode's samples: the entries with the smallest seeded hash priority.

A token row's priority is a hash of (seed, text_id, position) and a text's of (seed, text_id),
so which rows and texts are kept does not depend on batching, on the number of processes or on
the order they arrive in (analysis/accumulate.py keeps one `Smallest` for the token sample and
one for the mean-pooled text vectors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

M64 = 0xFFFFFFFFFFFFFFFF


# --- seeded priorities ----------------------------------------------------------------------

def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = np.atleast_1d(np.asarray(x).astype(np.uint64))
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def token_priority(seed: int, text_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint64 priority of each token row [row] from (seed, text_id, position); position = index
    of the row among its text's counted rows. Smallest K priorities = the token sample."""
    key = _mix64(np.uint64(seed & M64)) ^ np.asarray(text_ids).astype(np.uint64)
    return _mix64(_mix64(key) ^ np.asarray(positions).astype(np.uint64))


def text_priority(seed: int, text_ids: np.ndarray) -> np.ndarray:
    """uint64 priority of each text [text] (a different stream from the token priorities)."""
    return _mix64(_mix64(np.uint64((seed ^ 0x5EED7E47) & M64)) ^ np.asarray(text_ids).astype(np.uint64))


@dataclass
class Smallest:
    """The `cap` entries with the smallest (priority, text_id, position) offered so far.

    Entries sit in arbitrary slots; `ordered()` gives them sorted by (text_id, position)."""
    cap: int
    dtype: type  # of the values
    priority: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # [entry]
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # [entry, 2]
    values: np.ndarray | None = None  # [layer + 1, capacity >= entry, d_model]

    def offer(self, priority: np.ndarray, keys: np.ndarray, take: Callable[[np.ndarray], np.ndarray]
              ) -> None:
        """Offer entries; `take(index)` returns the values [layer + 1, len(index), d] of those
        that enter (only they are copied)."""
        n_old = self.priority.size
        if n_old == self.cap and n_old:  # quick reject: nothing above the current worst enters
            cand = np.nonzero(priority <= self.priority.max())[0]
            priority, keys, take = priority[cand], keys[cand], (lambda i, t=take, c=cand: t(c[i]))
        if priority.size == 0:
            return
        allp = np.concatenate([self.priority, priority])
        allk = np.concatenate([self.keys, keys])
        order = np.lexsort((allk[:, 1], allk[:, 0], allp))[:self.cap]
        enter = order[order >= n_old] - n_old
        if enter.size == 0:
            return
        n_new = order.size
        free = np.concatenate([np.setdiff1d(np.arange(n_old), order[order < n_old]),
                               np.arange(n_old, n_new)])
        new = take(enter)
        if self.values is None or self.values.shape[1] < n_new:
            # room for `cap` entries at once: the OS backs the pages as rows are written
            grown = np.empty((new.shape[0], self.cap, new.shape[2]), self.dtype)
            if n_old:
                grown[:, :n_old] = self.values[:, :n_old]
            self.values = grown
        if free.size and free[-1] - free[0] == free.size - 1:  # one run of slots (sorted): a slice
            self.values[:, free[0]:free[-1] + 1] = new
        else:
            self.values[:, free] = new
        self.priority = np.concatenate([self.priority, np.zeros(n_new - n_old, np.uint64)])
        self.keys = np.concatenate([self.keys, np.zeros((n_new - n_old, 2), np.int64)])
        self.priority[free], self.keys[free] = priority[enter], keys[enter]

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys [entry, 2], values [layer + 1, entry, d]) sorted by (text_id, position)."""
        o = np.lexsort((self.keys[:, 1], self.keys[:, 0]))
        return self.keys[o], (self.values[:, o] if self.values is not None else None)
