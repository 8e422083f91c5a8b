"""Builders for the networks every stage trains, from typed config."""
