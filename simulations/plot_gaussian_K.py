"""Plot the conditional-Gaussian study against K: python simulations/plot_gaussian_K.py [--csv PATH] [--outdir DIR]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simulations.gaussian import plot_command # pylint: disable=wrong-import-position

main = plot_command('K')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
