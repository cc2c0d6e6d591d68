"""Failing fast and routing around failures: the circuit breaker and the retry budget."""
