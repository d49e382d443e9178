"""Drop-in replacements for the timer modules of Deep500-for-MAELSTROM (the seed's section 3.2).

``from deep500.utils import timer`` becomes ``from maeltrace.deep500 import timer``; the rest of
the code stays as it is.
"""
