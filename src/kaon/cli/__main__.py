from kaon.cli.app import main

main()
