"""The backends, one module each; `framebench.registry` lists them and imports them on demand."""
