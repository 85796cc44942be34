"""The contract between stages: every file one stage hands to another, in one place.

Each file has exactly one writer and one reader module here, its name in one constant, and
(for JSON) one frozen dataclass record read and written by ``dataset.common.records``. The
files, their writers and readers, and every field: docs/reference/contract.md. No other
module opens these files by name (tests/test_contract.py checks that).
"""
