"""Kafka side of the worker: the consumer loop, result/DLQ producer, commits and rebalances."""
