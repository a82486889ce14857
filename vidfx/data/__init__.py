"""Training data made on this machine: source clips (`scenes`), looks (`looks`), a look classifier."""
