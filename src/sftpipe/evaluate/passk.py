"""Unbiased pass@k (Chen et al., 2021): the chance that at least one of k samples drawn without replacement
from n generated samples, c of them correct, passes: 1 - C(n-c, k) / C(n, k)."""

from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c pass.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), equal to 1 - C(n-c,k)/C(n,k) without huge binomials.

    Raises:
        ValueError: k > n, c > n, or negative counts.
    """
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: list[tuple[int, int]], ks: list[int]) -> dict[str, float]:
    """Mean pass@k over problems given (n, c) per problem, for each k no larger than every problem's n."""
    if not counts:
        return {}
    smallest = min(n for n, _ in counts)
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
            for k in sorted(set(ks)) if k <= smallest}
