"""Applications of a pretrained encoder: featurising candidates and Bayesian optimisation."""
