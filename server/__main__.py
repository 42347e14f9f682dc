import sys

from alexnet_server.server.cli import cli

sys.exit(cli())
