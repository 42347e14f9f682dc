import sys

from alexnet_server.clients.classify_cli import cli

sys.exit(cli())
