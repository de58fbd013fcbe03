"""Model layer: registry, weights, conversion, loading, batched encoding and the embedding cache.

Import from the submodules; this package stays light so `import napari_clipmed.models.registry`
does not load torch.
"""
