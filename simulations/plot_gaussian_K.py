"""Plot the conditional-Gaussian study against K: python -m simulations.plot_gaussian_K [--csv PATH] [--outdir DIR]"""
from simulations.plotting import plot_command

main = plot_command('K')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
