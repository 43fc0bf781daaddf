"""Data: the bundled corpus, input readers, offline and online packing, rank balancing."""
