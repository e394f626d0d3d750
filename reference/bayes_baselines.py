"""The Bayes baselines' numbers quoted in the README (the developmental-landscape section):

    python reference/bayes_baselines.py

1. The ridge (Bayes) loss per position for D = 4, K = 8, sigma^2 = 0.125 from its closed form
   sigma^2 (1 + E_X tr((X_k^T X_k + sigma^2 I)^-1)), by Monte Carlo over the inputs alone
   (iclgd.baselines.expected_ridge_loss, 2e6 samples, seed 0).
2. The mean squared gap between dMMSE over a pool of M tasks and ridge on the same 400 sequences
   from the Gaussian prior (the sequences and pools of tests/test_bayes_baselines.py).
"""
from __future__ import annotations

import numpy as np

from iclgd import NoisyRegressionTask
from iclgd.baselines import dmmse, expected_ridge_loss, ridge


def main() -> None:
    mean, error = expected_ridge_loss(4, 8, 0.125, 2_000_000, 0)
    print("ridge loss per position:", " ".join(f"{m:.4f}" for m in mean))
    print(f"mean over positions: {mean.mean():.4f} (largest standard error {error.max():.1e})")
    examples = NoisyRegressionTask().sample_examples(400, 2024)
    target = ridge(examples, 0.125)
    for m in (1, 16, 256, 4096, 16384):
        pool = NoisyRegressionTask(n_tasks=m, pool_seed=7).pool()
        gap = float(np.mean((dmmse(examples, pool, 0.125) - target) ** 2))
        print(f"dMMSE(M = {m}) vs ridge, mean squared gap: {gap:.3g}")


if __name__ == "__main__":
    main()
