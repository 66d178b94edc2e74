"""Put on an engine process's PYTHONPATH by vlmgate: makes torchvision importable there (see vlmgate/compat.py)."""

try:
    from vlmgate.compat import install_import_hook

    install_import_hook()
except ImportError:  # vlmgate not importable in this interpreter: nothing to guard
    pass
