"""Packaging beyond what pyproject.toml can say: the configs in `conf/` (at the repository root,
where users read and edit them) go into the wheel as the package data `app/conf/`, so a regular
install (`pip install .`, `pip install git+URL`) carries them. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["app", "app.*"]), "app.conf"],
    package_dir={"app.conf": "conf"},
    package_data={"app.conf": ["*.yaml", "**/*.yaml"]},
)
