from lipcheck.cli import main

main()
