"""Analysis of trained models: the local learning coefficient (llc), the objectives SGLD
samples (objective), and models whose learning coefficient is known (known_lc)."""
