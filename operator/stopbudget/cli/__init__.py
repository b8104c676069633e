"""stopbudget.cli.main."""
