from adapmtl_cli.cli import main

main()
