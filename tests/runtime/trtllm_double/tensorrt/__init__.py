"""Test double: the version string manifest.py reads, and the import failure of an image whose loader
path lacks TensorRT's libraries (ORPHEUS_TEST_TENSORRT_IMPORT_ERROR, read at import like the real
library's dlopen)."""

import os

if os.environ.get("ORPHEUS_TEST_TENSORRT_IMPORT_ERROR"):
    raise ImportError(os.environ["ORPHEUS_TEST_TENSORRT_IMPORT_ERROR"])

__version__ = "10.14.1.48"
