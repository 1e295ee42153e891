"""GRPO on the reverse diffusion chain (METHOD.md section 4)."""
