from smtpguard.cli.main import main

main()
