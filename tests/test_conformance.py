"""The conformance suite (framebench.testing) over every registered (backend, variant)."""

from framebench.core.registry import REGISTRY
from framebench.testing import conformance_test

test_conformance = conformance_test(*REGISTRY.values())
