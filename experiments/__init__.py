"""The paper's experiments and ours (sweeps.py, analyses.py) and the speed figures (bench.py),
apart from the core: each imports the core, nothing in the core imports them.

    python -m experiments NAME        # one experiment (python -m experiments --help lists them)
    python -m experiments.bench       # speed figures for this machine
"""
