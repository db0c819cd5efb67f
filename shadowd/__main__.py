from shadowd.cli import main

main()
