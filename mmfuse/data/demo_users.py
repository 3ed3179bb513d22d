"""Demo interactions: users whose tastes are item content that only text + image together reveal.

Each of `users` users likes one or two of the 6 (shape, material) combinations, i.e. demo labels: the image shows
the shape, the text names the material. Each item draws about `per_item` users (at least 1) among its combination's
fans, and each of those is replaced by a random user with probability `noise`. Everything is seeded by the demo
seed, with streams of its own, so the items themselves are the same as without interactions.
"""

from __future__ import annotations

import numpy as np

from .demo_labels import LABELS

USER_STREAM, TASTE_STREAM = 101, 102


def user_name(index: int) -> str:
    return f"user-{index:05d}"


def user_tastes(seed: int, users: int) -> list[tuple[int, ...]]:
    """The label indices (`demo_labels.LABELS`) each user likes: 1 or 2, every label liked by someone."""
    rng = np.random.default_rng([seed, TASTE_STREAM])
    tastes = []
    for u in range(users):
        first = u % len(LABELS)  # round robin: every combination has fans
        if rng.random() < 0.5:
            tastes.append((first,))
        else:
            second = int(rng.choice([c for c in range(len(LABELS)) if c != first]))
            tastes.append((first, second))
    return tastes


class UserDraw:
    """Draws the users of each item of one split (`draw(label_index)` -> sorted user indices)."""

    def __init__(self, seed: int, offset: int, users: int, per_item: float, noise: float) -> None:
        self.rng = np.random.default_rng([seed, offset, USER_STREAM])
        self.users, self.per_item, self.noise = users, per_item, noise
        tastes = user_tastes(seed, users)
        self.fans = [[u for u, liked in enumerate(tastes) if c in liked] for c in range(len(LABELS))]

    def draw(self, label: int) -> list[int]:
        fans = self.fans[label]
        count = min(1 + int(self.rng.poisson(max(self.per_item - 1.0, 0.0))), len(fans))
        chosen = set(int(u) for u in self.rng.choice(fans, size=count, replace=False))
        noisy = {u for u in chosen if self.rng.random() < self.noise}
        chosen = (chosen - noisy) | {int(self.rng.integers(self.users)) for _ in noisy}
        return sorted(chosen)
