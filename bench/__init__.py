"""The side-by-side benchmark of tlstunnel against stunnel4 (run ``python3 bench/run.py``)."""
