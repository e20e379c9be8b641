"""The issue body → a validated TrainingSpec (body.py), and the algorithm catalog (catalog.py, catalog_docs.py)."""
