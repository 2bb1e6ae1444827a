"""The aiohttp server: WebSocket and OpenAI-style HTTP, readiness, metrics, the playground, model loading."""
