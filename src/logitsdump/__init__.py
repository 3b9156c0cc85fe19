"""logitsdump: tell a cross-device precision bug from numerical noise.

Importing this package is cheap: torch and transformers are imported only
inside the functions that need them.
"""

__version__ = "0.1.0"
