"""Gaussian diffusion over teacher trajectories: schedules, losses, samplers with exact log-probs."""
