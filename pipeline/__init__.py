"""The scoring pipeline: config, storage, and one module per stage, folded over a lazy Dataset."""
