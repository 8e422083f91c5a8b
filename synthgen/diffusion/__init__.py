"""Training objectives, sampling loops and the assembly of the denoiser input."""
