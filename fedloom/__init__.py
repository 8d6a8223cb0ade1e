"""fedloom: federated learning simulation with vectorized cohorts and honest byte accounting."""

__version__ = "0.1.0"
