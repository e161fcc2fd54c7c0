"""Subset ensembles: K models trained on seeded subsets of one run's training set."""
