"""The RedOne 2.0 pipeline: stages 1-3, diagnosis, soft labels, evaluation and the run report."""
