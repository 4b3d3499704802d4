"""Build hook for the optional C speedups of the app SDK (streams/_speedups.c).

Everything else about the package is in pyproject.toml. ``optional=True``: where no C compiler is
available, the build prints a warning and ctloop installs without the extension; the SDK then uses
its pure-Python encoders (same bytes, slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("streams._speedups", ["streams/_speedups.c"], optional=True,
                             extra_compile_args=["-O2"])])
