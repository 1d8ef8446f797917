"""``python -m cryophile``: the same as the ``cryophile`` command."""

from cryophile.cli.main import main

main()
