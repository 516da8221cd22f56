"""The optional C part of the package; everything else is in pyproject.toml.

``routing_middleware._wordscan`` speeds up the built-in classifier's pass over a
text's words, ``routing_middleware._messagescan`` the pass over a request's messages
that every routing decision makes, ``routing_middleware._records`` the making of the
decision itself. All are optional: without a C compiler the build
goes on without them and the package uses its pure-Python paths, which give the same
answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "routing_middleware._wordscan",
            ["routing_middleware/_wordscan.c"],
            optional=True,
        ),
        Extension(
            "routing_middleware._messagescan",
            ["routing_middleware/_messagescan.c"],
            optional=True,
        ),
        Extension(
            "routing_middleware._records",
            ["routing_middleware/_records.c"],
            optional=True,
        ),
    ]
)
