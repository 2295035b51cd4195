"""PyFlink jobs that turn Kafka events into live features in Redis."""
