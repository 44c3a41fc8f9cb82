"""The version of tfopt: defined here and only here.

`setup.cfg` reads it (`version = attr: tfopt._version.__version__`), `tfopt.__version__`
imports it, and `tfopt --version` prints it.
"""

__version__ = "0.2.0"
