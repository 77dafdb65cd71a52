"""Model definitions, feature transforms and the checkpoint format.

Imports only torch, numpy and pyarrow. Torch is imported lazily by the submodules that need it,
so `models.features` can be used (and the CLI started) without loading torch.
"""
