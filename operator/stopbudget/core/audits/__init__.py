"""stopbudget.core.audits."""
