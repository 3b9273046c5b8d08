"""ucdir-lite: unsupervised cross-domain image retrieval (UCDIR), small and readable."""

__version__ = "0.1.0"
