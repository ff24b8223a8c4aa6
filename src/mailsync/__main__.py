from mailsync.cli.main import main

main()
