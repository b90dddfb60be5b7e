"""Build script for the C++ extension only; package metadata lives in pyproject.toml.

``pip install -e .`` (or ``python setup.py build_ext --inplace``) compiles
``data_tools/_helpers.cpp`` into ``data_tools._helpers``.  Nothing is compiled
at run time on compute nodes.
"""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "data_tools._helpers",
        ["data_tools/_helpers.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
