"""Models by name or file, their preprocessing, data sets, and training of the zoo's models."""
