"""A small OTLP trace receiver for tests: HTTP/protobuf and gRPC."""

import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Receiver:
    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def ingest(self, req):
        with self.lock:
            for rs in req.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append({
                            "name": s.name,
                            "kind": s.kind,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "attributes": {a.key: _value(a.value) for a in s.attributes},
                            "events": [e.name for e in s.events],
                            "status_code": s.status.code,
                            "resource": resource,
                        })

    def by_name(self, prefix):
        with self.lock:
            return [s for s in self.spans if s["name"].startswith(prefix)]


class HttpReceiver(Receiver):
    def __init__(self, tls=None):
        """`tls`: (cert_path, key_path) to serve https."""
        super().__init__()
        outer = self
        self.requests = []  # (path, headers) of each export
        self.times = []  # when each export arrived (monotonic)
        # Answers for the next exports, in order: a status, or a
        # (status, Retry-After) pair.
        self.fail = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                with outer.lock:
                    outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                    outer.times.append(time.monotonic())
                    fail = outer.fail.pop(0) if outer.fail else None
                body = self.rfile.read(int(self.headers["content-length"]))
                if fail:
                    status, retry_after = fail if isinstance(fail, tuple) else (fail, None)
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("retry-after", str(retry_after))
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                outer.ingest(req)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


class GrpcReceiver(Receiver):
    def __init__(self, tls=None):
        """`tls`: (cert_path, key_path) to serve gRPC over TLS."""
        super().__init__()
        outer = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                outer.ingest(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        if tls:
            with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            port = self.server.add_secure_port("127.0.0.1:0", creds)
        else:
            port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def stop(self):
        self.server.stop(0)
