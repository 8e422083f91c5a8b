"""The training engine shared by every stage: the accelerate loop and checkpoints."""
