"""napari widgets (Qt lives only here). One module per widget; shared wiring in `_base` and `_session`."""
