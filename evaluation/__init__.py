"""Scoring label maps against truth: metrics, reports, cross-validation, pictures."""
