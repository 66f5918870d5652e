"""Find replicas: in-process LRU, memcached, parallel fan-out to endpoints."""
