"""What tests import, beside fixtures (which stay in tests/conftest.py).

* :mod:`support.cli`: the real ``cryophile`` command in a subprocess (``Cli``,
  ``Result``) and the vault id the tests back up to (``VAULT``).
* :mod:`support.files`: the checkout (``REPO``), spool preparation and
  snapshots of a directory tree, real tar streams.
"""
