"""Predicting label maps for new CTs with trained runs: sliding windows, ensembles, post-processing."""
