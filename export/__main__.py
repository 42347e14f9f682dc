import sys

from export.cli import cli

sys.exit(cli())
