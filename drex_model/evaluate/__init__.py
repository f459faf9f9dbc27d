"""Offline evaluation: dataset loading and splitting, the paper's metrics, simple baselines."""
