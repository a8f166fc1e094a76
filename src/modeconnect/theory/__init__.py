"""Theory: the papers' theorems made concrete and measurable."""
