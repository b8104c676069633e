"""stopbudget.schema."""
