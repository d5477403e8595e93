"""tlstunnel: stunnel's TLS tunnel, rebuilt in Python.

Server mode accepts TLS and forwards plaintext; client mode accepts plaintext and
connects out over TLS.  Configuration files are stunnel's own.
"""

__version__ = "0.1.0"
