"""Readers and writers shared by every operation: atomic writes, output-path checks, run folders."""
