"""Headless operations: one module per operation, shared by the widgets, `napari_clipmed.api` and the CLI.

Each operation module has a frozen ``...Request`` (validates itself when built), an
``iter_run(request, model)`` generator (yields `Progress`, honours cancel) with its plain twin
``run``, and a ``...Result`` with ``.to_frame()``, ``.save(folder)`` (atomic) and
``.to_layer_data(geometry)`` (napari layer-data tuples, plain data). See docs/architecture.md.

Kept light: import the submodules. Nothing under `ops` imports Qt or napari.
"""
