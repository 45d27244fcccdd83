from higgs_cli.main import cli

cli(prog_name="higgs")
