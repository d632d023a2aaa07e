"""``python -m fluxaorm``: the ``fluxaorm`` command (see fluxaorm.cli)."""

from fluxaorm.cli import main

if __name__ == "__main__":
    main()
