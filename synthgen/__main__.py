from synthgen.cli import main

main()
