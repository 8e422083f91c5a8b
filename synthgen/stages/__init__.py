"""The three training stages: autoencoder, encode (latent cache), diffusion (ldm, inpaint)."""
