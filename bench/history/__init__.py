"""History: many results directories as one queryable record (series), step changes detected over
it (changes), and a static dashboard (site). DuckDB reads the tables in place; nothing is imported."""
