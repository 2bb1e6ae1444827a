"""Prints the lines of a pinned requirements file whose package is not installed yet.

Used by runtime-trtllm.Dockerfile: packages the TensorRT-LLM base image already ships keep its versions.
"""

import re
import sys
from importlib import metadata

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(line)
