"""Plot the conditional-Gaussian study against n: python simulations/plot_gaussian_n.py [--csv PATH] [--outdir DIR]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simulations.gaussian import plot_command # pylint: disable=wrong-import-position

main = plot_command('n')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
