"""Facts, the knowledge worlds they come from, and how training subsets are drawn."""
