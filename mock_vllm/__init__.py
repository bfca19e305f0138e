"""mock_vllm: a fake `vllm serve` that behaves like the real one, for tests and demos."""
