"""Encoders: images to factor codes, one block per factor."""
