"""``python -m tcpcryptd`` = the ``tcpcryptd`` command."""

from tcpcryptd.cli import main

main()
