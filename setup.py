"""Builds the optional compiled feed path, marketdata/_fastbook.c, in place.

    python setup.py build_ext --inplace      (run by `make install`, failure tolerated)

polysim is not a package to install: this file only builds that one extension. Without it
(no C compiler) the pure-Python feed path is used; see marketdata/fastbook.py.
"""

from setuptools import Extension, setup

setup(
    name="polysim-fastbook",
    version="0",
    py_modules=[],
    ext_modules=[
        Extension(
            "marketdata._fastbook",
            sources=["marketdata/_fastbook.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
