"""Experiment code on top of the library: datasets, model definitions, the training loop, layer
discovery, benchmark sweeps, result rows and plots. The core never imports this package; it needs
the ``[experiments]`` extra (numpy, pandas, matplotlib, tqdm, scikit-learn)."""
