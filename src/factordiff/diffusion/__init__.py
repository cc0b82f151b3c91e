"""Denoiser, code adapters, guidance and samplers."""
