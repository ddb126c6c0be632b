"""Infrastructure every layer may use: small file-safety helpers with no model code."""
