import sys

from server.cli import cli

sys.exit(cli())
