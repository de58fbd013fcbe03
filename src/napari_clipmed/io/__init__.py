"""Readers and writers: slides (lazy pyramids), atomic file output."""
