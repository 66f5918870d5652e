"""Choose replicas: GeoIP location and ranking."""
