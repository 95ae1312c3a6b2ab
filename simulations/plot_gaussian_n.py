"""Plot the conditional-Gaussian study against n: python -m simulations.plot_gaussian_n [--csv PATH] [--outdir DIR]
(or python simulations/plot_gaussian_n.py, from anywhere)"""
import os
import sys

if not __package__: # Run as a file: import this repository's packages, as `python -m` from its root would.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simulations.plotting import plot_command # pylint: disable=wrong-import-position

main = plot_command('n')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
