import sys

from clients.classify_cli import cli

sys.exit(cli())
