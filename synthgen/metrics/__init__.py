"""Evaluation: fidelity, utility, fairness, memorisation and phantom-rule probes."""
