"""The runner: inputs, prompts, the engine, retries, output and the library API."""
