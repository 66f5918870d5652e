"""Confirmed uploads: after fedd redirects (or carries) a PUT, it learns whether the object landed
(`pending`: the table and the rules; `service`: looking at targets, events; `rgw`: Ceph RGW bucket
notifications read from RabbitMQ)."""
