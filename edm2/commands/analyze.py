"""`edm2 analyze`: diagnostics of trained and reconstructed networks. Each subcommand lives in
its own module (edm2.commands.analyze_*) and is added here."""

import click

from edm2.commands.analyze_phema import phema_profile


@click.group()
def analyze():
    """Diagnostics of trained and reconstructed networks."""


analyze.add_command(phema_profile)
