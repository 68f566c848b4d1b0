"""AlphaSTomics: a diffusion transformer that places cells in tissue from their expression.

Every stage of the workflow is ``python -m alphastomics <stage>``; see ``alphastomics/__main__.py``.
"""

__version__ = "0.1.0"


class AlphaSTomicsError(Exception):
    """A user-facing error: bad input or config. The message is one line naming file, field and fix."""
