"""DIA: fine-grained anomaly detection in medical images (Dissolving Is Amplifying)."""

__version__ = "0.1.0"
