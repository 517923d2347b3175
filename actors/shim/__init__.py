"""The shim: one process per container, owning it for its whole life (see ``__main__``)."""
