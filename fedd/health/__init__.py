"""Endpoint health: state with hysteresis and the polling service."""
