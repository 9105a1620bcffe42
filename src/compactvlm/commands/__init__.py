"""CLI subcommands, one module each (see ``compactvlm.cli``)."""
