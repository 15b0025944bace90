"""``python -m gateway.cli``: the ``edgefaas`` command."""

from gateway.cli.main import main

main()
