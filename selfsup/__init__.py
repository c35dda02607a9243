"""selfsup: self-supervised pretraining, collapse diagnostics and label-efficiency evaluation."""

__version__ = "0.1.0"
