"""stopbudget.controller."""
