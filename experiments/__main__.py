"""python -m experiments NAME: run one experiment (experiments/sweeps.py)."""

from experiments.sweeps import main

main()
