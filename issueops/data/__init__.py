"""Datasets: where a spec's data comes from (sources.py) and the prepare_data stage (prepare.py)."""
