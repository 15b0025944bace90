"""The node's HTTP side: trigger routes, the admin API, metrics, health, and the CLI."""
