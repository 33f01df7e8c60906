from microfer.cli import main

main()
