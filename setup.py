"""Build of the optional C accelerator of the pin check (docs/decisions/pin-c-accelerator.md).

Metadata lives in pyproject.toml; this file only declares the extension. It is optional:
without a compiler or OpenSSL headers the install goes on and skewless uses the
pure-Python code. For a source checkout run with PYTHONPATH=src:

    python setup.py build_ext --inplace
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "skewless._pinfast",
            ["src/skewless/_pinfast.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)
