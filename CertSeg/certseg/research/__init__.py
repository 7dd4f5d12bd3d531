"""What model developers run: datasets, DRRs, training, evaluation, bench and attacks.  Never on the runtime path."""
