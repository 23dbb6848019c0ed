"""History: many results directories as one queryable record (series), step changes detected over
it (changes), and a static dashboard (site). Directories are read through the store's one reader (framebench.store.reader); DuckDB runs
the queries over them and writes the Parquet export."""
