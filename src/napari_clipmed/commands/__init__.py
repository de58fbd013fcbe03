"""CLI subcommands, one module per area (see `napari_clipmed.cli`)."""
