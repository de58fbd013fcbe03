"""Input and output that every operation shares: the one atomic-write helper (`io.atomic`).

Kept light: importing this package loads nothing heavy; import the submodules.
"""
