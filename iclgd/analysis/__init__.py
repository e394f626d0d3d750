"""Analysis of trained models: the local learning coefficient (llc), the objectives SGLD
samples (objective), the step-size sweep (calibrate), models whose learning coefficient is known
(known_lc), essential dynamics over checkpoints (essential_dynamics) and stage boundaries from a
curve over training (stages)."""
