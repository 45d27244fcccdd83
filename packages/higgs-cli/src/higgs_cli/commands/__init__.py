"""The `higgs` commands, one module each; `higgs_cli.main` loads them on demand."""
