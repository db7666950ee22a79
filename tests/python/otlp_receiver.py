"""A small OTLP/gRPC receiver (traces and metrics) for tests and benchmarks: it keeps what it receives
in memory. Run as a script to sink exports during a benchmark: python otlp_receiver.py PORT"""

import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.spans = []  # (resource attributes dict, span)
        self.metric_names = set()
        self.span_count = 0

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            with self.lock:
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            self.span_count += 1
                            if len(self.spans) < 10000:
                                self.spans.append((resource, span))
            return trace_service_pb2.ExportTraceServiceResponse()
        with self.lock:
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        self.metric_names.add(metric.name)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver):
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802
        return self.receiver.Export(request, context)


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver):
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802
        return self.receiver.Export(request, context)


def start(port=0):
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(receiver), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, receiver, bound


if __name__ == "__main__":
    server, receiver, bound = start(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    try:
        while True:
            time.sleep(5)
            print(f"spans received: {receiver.span_count}", flush=True)
    except KeyboardInterrupt:
        server.stop(0)
