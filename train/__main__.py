import sys

from alexnet_server.train.cli import cli

sys.exit(cli())
