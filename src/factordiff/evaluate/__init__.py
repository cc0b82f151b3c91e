"""Evaluation: disentanglement metrics, oracle-judged counterfactuals, distances and latent analysis."""
