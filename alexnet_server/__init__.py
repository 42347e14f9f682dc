"""The AlexNet inference server's Python packages, under one import name.

``alexnet_server.contract``, ``.imaging``, ``.runtime``, ``.train``, ``.export``, ``.server``
and ``.clients`` are the repository's top-level folders (pyproject.toml's ``package-dir``
installs each under this package), so an install adds one name to site-packages, not seven
generic ones.  In a checkout run without installing (``PYTHONPATH=.``, Triton's python-backend
stubs), the folders are found beside this one.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "contract" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 - a package's __path__: the checkout's top-level folders are its subpackages
