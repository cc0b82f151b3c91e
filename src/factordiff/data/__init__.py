"""Datasets: images or profiles with a table of factor values, described by a FactorSpec
(``sources.load_data`` reads the ``--data`` reference of an image run)."""
