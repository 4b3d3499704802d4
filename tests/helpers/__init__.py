"""Test helpers shared by the test files (subprocess workers, waiting on conditions)."""
