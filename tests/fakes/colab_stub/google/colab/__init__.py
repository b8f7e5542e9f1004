"""A stand-in for Colab's ``google.colab`` package, as much of it as the widget display path uses.

Colab's kernel imports ``google.colab`` (and so ``google.colab.output``) when it starts; a test
imports this package to play that part. There is deliberately no ``google/__init__.py``: ``google``
stays a namespace package, so ``google.protobuf`` and friends still import beside it.
"""

from . import output  # noqa: F401  (Colab's package imports its submodules at start-up)
