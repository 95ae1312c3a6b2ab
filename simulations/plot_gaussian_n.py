"""Plot the conditional-Gaussian study against n: python -m simulations.plot_gaussian_n [--csv PATH] [--outdir DIR]"""
from simulations.plotting import plot_command

main = plot_command('n')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
