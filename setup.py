"""The optional C part of the package; everything else is in pyproject.toml.

``routing_middleware._wordscan`` speeds up the built-in classifier's pass over a
text's words. It is optional: without a C compiler the build goes on without it and
the classifier uses its pure-Python path, which gives the same answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "routing_middleware._wordscan",
            ["routing_middleware/_wordscan.c"],
            optional=True,
        )
    ]
)
