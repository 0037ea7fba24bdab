"""`python -m dispatch_notifier` is the `dispatch-notifier` command."""

from dispatch_notifier.cli import main

main()
