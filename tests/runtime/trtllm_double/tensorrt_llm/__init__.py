"""A small stand-in for TensorRT-LLM 1.2.x, for CPU tests of build_engine.py and trtllm_engine.py.

It follows the documented API surface those modules use, with keyword-only constructors that reject
unknown arguments (as pydantic models and kw_only dataclasses in the real package do), and records
every call so tests can inspect what the code under test asked for. It generates no real tokens:
tests script the token stream through `LLM.behaviour`.
"""

__version__ = "1.2.1"
