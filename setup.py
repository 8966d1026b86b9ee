"""Packaging that pyproject.toml cannot say: the repository's configs/ ships as ``memnet.configs``.

configs/ stays the one source; the wheel (and an editable install) maps it to the package
``memnet.configs``, so an installed ``memnet fit --config ntm/copy`` finds the shipped copy
(see memnet.cli.configs). Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["memnet*", "tasks*"]), "memnet.configs"],
    package_dir={"memnet.configs": "configs"},
)
