"""Reports: every markdown renderer and plot, from typed results to text and PNG bytes."""
