"""stopbudget.core."""
