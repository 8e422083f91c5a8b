"""Bulk sampling: conditions per sample, seeded noise, watermarked files, manifest shards."""
