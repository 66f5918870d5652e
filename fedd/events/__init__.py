"""Events: Rucio-Hermes-style JSON messages -> durable local outbox (SQLite) -> AMQP or a spool file."""
