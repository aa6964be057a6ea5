from mailcontinuity.cli import main

main()
