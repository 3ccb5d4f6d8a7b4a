"""The ``tcpcryptd`` command (placeholder until the daemon lands)."""

import click


@click.group()
@click.version_option()
def main() -> None:
    """Transparent TCP-ENO + tcpcrypt encryption daemon."""
