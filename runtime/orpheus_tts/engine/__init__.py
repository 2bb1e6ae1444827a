"""The engines behind one interface: the torch engine (scheduler, model runner, thread) and TensorRT-LLM."""
