"""Gauntlet: evaluate, fine-tune and serve robot VLA policies on Ray.

Importing the package is cheap on purpose: rollout actors import it, so heavy frameworks
(JAX, torch, robosuite) are imported inside the modules that need them.
"""

__version__ = "0.1.0"
