"""The client side: the ``edgefaas`` command and what it runs on the user's machine.

- :mod:`~gateway.cli.main` — argument parsing, the commands, exit codes (the only code that
  exits the process);
- :mod:`~gateway.cli.client` — the admin API's HTTP client (the token, errors in words);
- :mod:`~gateway.cli.deploy` — ``edgefaas deploy``: build, sign, upload, follow the rollout;
- :mod:`~gateway.cli.localmesh` — ``edgefaas mesh up``: several nodes on one machine.

May import anything: ``edgefaas up`` runs a node (:mod:`gateway.server`). Nothing outside
this folder imports it — a node never needs the client side.
"""
