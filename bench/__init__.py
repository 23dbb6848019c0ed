"""framebench: one MLP classifier trained identically by every framework, timed honestly."""
