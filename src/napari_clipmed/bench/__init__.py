"""Benchmarks on labelled tile sets: single zero-shot / retrieval runs (`tasks`), the robustness
grid (`robustness`) and its tables and plots (`report`). Import from the submodules."""
