"""CT pipeline for the ILD study: volumes in HU, lung mask, physical-size patches, CLIP scores, montage.

Import from the submodules (`ct.io`, `ct.lung`, `ct.patches`, `ct.montage`, `ct.ild`, `ct.cohort`);
this package imports nothing heavy.
"""
