"""stopbudget.devkit."""
