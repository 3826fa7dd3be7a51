"""Kafka side of the monitor: the stream worker and the local Apache Kafka broker launcher."""
