"""Test scaffolding: tiny stores and runs built directly, for the tests and benchmarks (not used by any command)."""
