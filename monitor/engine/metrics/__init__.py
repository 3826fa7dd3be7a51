"""Pure functions from additive statistics to figures. NaN means undefined (exported as absent)."""
