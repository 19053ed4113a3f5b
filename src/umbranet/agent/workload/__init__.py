"""The SPIFFE Workload API, served by the agent on a Unix socket (gRPC, the spec's proto).

Local workloads that speak SPIFFE (py-spiffe, go-spiffe, Envoy's SDS via SPIRE-style
clients) get the agent's X.509-SVID and bundle, streamed again on every rotation, and
JWT-SVIDs signed by the controller, without holding an identity file of their own.

    endpoint = WorkloadEndpoint(context, Path("/run/umbra/workload.sock"))
    await endpoint.start()
    ...
    await endpoint.close()

``workload.proto`` is the spec's message set; ``workload_pb2*.py`` are generated from it
by ``regenerate.sh`` and checked in (see README.md).
"""

from umbranet.agent.workload.endpoint import WorkloadEndpoint
from umbranet.agent.workload.server import (
    SECURITY_HEADER,
    WorkloadApiError,
    WorkloadApiServer,
    parse_endpoint_socket,
)
from umbranet.agent.workload.svids import JwtSvidCache, X509Material, x509_material

__all__ = [
    "SECURITY_HEADER",
    "JwtSvidCache",
    "WorkloadApiError",
    "WorkloadApiServer",
    "WorkloadEndpoint",
    "X509Material",
    "parse_endpoint_socket",
    "x509_material",
]
