from setuptools import Extension, setup

sources = ["token_columns.c", "pack.c", "unpack.c"]
setup(ext_modules=[Extension("token_columns", sources, extra_compile_args=["-O2"])])
