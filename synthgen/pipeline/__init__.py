"""Inference: a trained checkpoint as a generator, in pixel or latent space."""
