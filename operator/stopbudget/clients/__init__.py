"""stopbudget.clients."""
