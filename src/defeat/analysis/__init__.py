"""Analyses of trained detectors and of distillation (the DeFeat supplementary's figures)."""
