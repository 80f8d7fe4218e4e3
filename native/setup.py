from setuptools import Extension, setup

setup(ext_modules=[Extension("token_columns", ["token_columns.c"], extra_compile_args=["-O2"])])
