"""Builds the optional compiled extension ``sparsekern._C``.

The package works without it (reference and Triton backends). Environment:
  SPARSEKERN_SKIP_EXTENSION=1  build no extension at all
"""

import os

from setuptools import setup

ext_modules, cmdclass = [], {}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
