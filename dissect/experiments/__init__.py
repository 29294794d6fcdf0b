"""Experiments: dissection (which concept each unit detects) and interventions."""
