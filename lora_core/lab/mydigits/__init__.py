"""Your own handwriting: the drawings (.collection) and the personal adapter trained on them (.personal)."""
