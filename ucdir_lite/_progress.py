"""The progress bar every long loop of the package uses.

``tqdm.auto`` gives notebook widgets where ``ipywidgets`` is installed (Colab, Jupyter with
widgets) and plain text bars elsewhere; without ipywidgets it would warn "IProgress not found"
in every notebook page of the book, so the text bar is chosen directly then.
"""

try:
    import ipywidgets  # noqa: F401
    from tqdm.auto import tqdm
except ImportError:
    from tqdm import tqdm

__all__ = ["tqdm"]
