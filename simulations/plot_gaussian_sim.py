"""Plot the conditional-Gaussian study against sim: python -m simulations.plot_gaussian_sim [--csv PATH] [--outdir DIR]"""
from simulations.plotting import plot_command

main = plot_command('sim')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
