"""TLS for tlstunnel: contexts built from the configuration, peer checks, readable errors.

``build_service_tls`` (in ``context``) is the only place that creates an
``ssl.SSLContext``; ``describe_tls_error`` (in ``errors``) explains handshake failures.
"""

from tlstunnel.tls.context import ServiceTLS, build_service_tls
from tlstunnel.tls.errors import TLSSetupError, describe_tls_error

__all__ = ["ServiceTLS", "TLSSetupError", "build_service_tls", "describe_tls_error"]
