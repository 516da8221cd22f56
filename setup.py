"""The optional C parts of the package; everything else is in pyproject.toml.

``routing_middleware._wordscan`` speeds up the built-in classifier's pass over a
text's words; ``_messagescan`` the pass over a request's messages that every routing
decision makes; ``_records`` the making of the decision itself; ``_costs`` the
writing of its costs. All are optional: without a C compiler the build goes on
without them and the package uses its pure-Python paths, which give the same answers
(``routing_middleware/_native.py``).
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
        Extension(
            "routing_middleware._costs",
            ["routing_middleware/_costs.c"],
            optional=True,
        ),
    ]
)
