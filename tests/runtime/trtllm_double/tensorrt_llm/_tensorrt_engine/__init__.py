from tensorrt_llm.llmapi import _FakeLLM as LLM

__all__ = ["LLM"]
