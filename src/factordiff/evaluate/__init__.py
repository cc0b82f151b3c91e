"""Evaluation: disentanglement metrics and friends."""
