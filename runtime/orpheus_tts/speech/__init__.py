"""Text to audio: prompts, audio-token frames, the SNAC decoder and its cross-stream batcher, the synthesizer."""
