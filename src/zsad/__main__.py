"""`python -m zsad` runs the command line."""

from zsad.cli.app import main

main()
