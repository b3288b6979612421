"""lln_jax: Large Loss Matters (LL-R, LL-Ct, LL-Cp) in JAX/Flax.

Importing the package touches no device.
"""

__version__ = "0.1.0"
