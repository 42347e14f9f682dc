import sys

from alexnet_server.export.cli import cli

sys.exit(cli())
