from mailcontinuity.cli.main import main

main()
