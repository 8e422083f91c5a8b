"""Mask-constrained editing of real images (RadEdit-style) for classifier stress tests."""
