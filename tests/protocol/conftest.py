"""Fixtures these tests share with another folder's (one definition, imported by name)."""

from tests.protocol.delivery_harness import cloud  # noqa: F401  (the signed-delivery cloud: test_model_delivery)
