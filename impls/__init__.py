"""The backends, one module each; `framebench.core.registry` lists them and imports them on demand."""
