use std::time::Duration;

use super::*;

fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn only_the_series_with_calls_are_shown() {
    let metrics = Metrics::default();
    let before = metrics.encode(Format::Prometheus).expect("encode");
    assert!(!before.contains("kubeconfigd_calls_total"), "{before}");
    assert!(
        !before.contains("kubeconfigd_call_duration_seconds"),
        "{before}"
    );

    metrics.call("grpc", "GetKubeconfig", "OK", Duration::from_millis(2));
    metrics.call("grpc", "GetKubeconfig", "OK", Duration::from_millis(20));
    metrics.call(
        "rest",
        "GetKubeconfig",
        ErrorKind::NotFound.palette_code(),
        Duration::from_secs(9),
    );
    let text = metrics.encode(Format::Prometheus).expect("encode");
    let calls: Vec<&str> = samples(&text)
        .into_iter()
        .filter(|l| l.starts_with("kubeconfigd_calls_total"))
        .collect();
    assert_eq!(calls.len(), 2, "{text}");
    assert!(calls.contains(
        &"kubeconfigd_calls_total{edge=\"grpc\",method=\"GetKubeconfig\",code=\"OK\"} 2"
    ));
    assert!(calls.contains(
        &"kubeconfigd_calls_total{edge=\"rest\",method=\"GetKubeconfig\",code=\"ResourceNotFound\"} 1"
    ));
    for line in [
        "kubeconfigd_call_duration_seconds_count{edge=\"grpc\",method=\"GetKubeconfig\"} 2",
        "kubeconfigd_call_duration_seconds_bucket{edge=\"grpc\",method=\"GetKubeconfig\",le=\"0.0025\"} 1",
        "kubeconfigd_call_duration_seconds_bucket{edge=\"grpc\",method=\"GetKubeconfig\",le=\"0.025\"} 2",
        "kubeconfigd_call_duration_seconds_bucket{edge=\"grpc\",method=\"GetKubeconfig\",le=\"+Inf\"} 2",
        "kubeconfigd_call_duration_seconds_bucket{edge=\"rest\",method=\"GetKubeconfig\",le=\"5\"} 0",
        "kubeconfigd_call_duration_seconds_bucket{edge=\"rest\",method=\"GetKubeconfig\",le=\"+Inf\"} 1",
        "kubeconfigd_call_duration_seconds_sum{edge=\"rest\",method=\"GetKubeconfig\"} 9.0",
    ] {
        assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
    }
    assert!(
        !text.contains("method=\"ListClusters\""),
        "no series for methods without calls: {text}"
    );
    assert_eq!(
        metrics.call_counts(),
        vec![
            ("grpc", "GetKubeconfig", "OK", 2),
            ("rest", "GetKubeconfig", "ResourceNotFound", 1),
        ]
    );
}

#[test]
fn unknown_methods_and_codes_are_counted_under_the_last_name() {
    let metrics = Metrics::default();
    metrics.call(
        "grpc",
        grpc_method("/other.Service/Call"),
        "Nonsense",
        Duration::ZERO,
    );
    let last = CODES[CODES.len() - 1];
    assert_eq!(metrics.call_counts(), vec![("grpc", "other", last, 1)]);
}

#[test]
fn the_service_counters_are_shown_from_the_start() {
    let metrics = Metrics::default();
    metrics.reload(true);
    metrics.parsed(3);
    metrics.limit(Limit::Watches);
    metrics.watch_streams(true);
    metrics.watch_streams(true);
    metrics.watch_streams(false);
    let text = metrics.encode(Format::Prometheus).expect("encode");
    for line in [
        "kubeconfigd_inventory_reloads_total{result=\"ok\"} 1",
        "kubeconfigd_inventory_reloads_total{result=\"failed\"} 0",
        "kubeconfigd_inventory_files_parsed_total 3",
        "kubeconfigd_limit_hits_total{limit=\"max_watch_streams\"} 1",
        "kubeconfigd_limit_hits_total{limit=\"anonymous_streams\"} 0",
        "kubeconfigd_watch_streams 1",
        "kubeconfigd_watch_events_total 0",
        "kubeconfigd_clusters_loaded 0",
        "kubeconfigd_log_lines_dropped_total 0",
        "kubeconfigd_connections_closed_total{reason=\"idle\"} ",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    assert_eq!(metrics.reloads(), (1, 0));
}

#[test]
fn both_formats_come_from_the_same_registry() {
    let metrics = Metrics::default();
    metrics.call("grpc", "ListClusters", "OK", Duration::from_millis(1));
    let prometheus = metrics.encode(Format::Prometheus).expect("encode");
    let openmetrics = metrics.encode(Format::OpenMetrics).expect("encode");

    // Prometheus text: the counter's family is named with `_total`; no units, no end marker.
    assert!(prometheus.contains("# TYPE kubeconfigd_calls_total counter\n"));
    assert!(
        prometheus
            .contains("# HELP kubeconfigd_calls_total Calls by edge, method and result code.\n")
    );
    assert!(prometheus.contains("# TYPE kubeconfigd_call_duration_seconds histogram\n"));
    assert!(!prometheus.contains("# UNIT"));
    assert!(!prometheus.contains("# EOF"));
    assert!(!prometheus.contains("_created"));

    // OpenMetrics: the family without `_total`, its sample with it; a unit; the end marker.
    assert!(openmetrics.contains("# TYPE kubeconfigd_calls counter\n"));
    assert!(openmetrics.contains(
        "kubeconfigd_calls_total{edge=\"grpc\",method=\"ListClusters\",code=\"OK\"} 1\n"
    ));
    assert!(openmetrics.contains("# UNIT kubeconfigd_call_duration_seconds seconds\n"));
    assert!(openmetrics.ends_with("# EOF\n"));

    // Every help text ends with one full stop.
    for text in [&prometheus, &openmetrics] {
        for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(help.ends_with('.') && !help.ends_with(".."), "{help}");
        }
    }
}

#[test]
fn the_accept_header_chooses_the_format() {
    use Format::{OpenMetrics, Prometheus};
    for (accept, format) in [
        (None, Prometheus),
        (Some(""), Prometheus),
        (Some("*/*"), Prometheus),
        (Some("text/plain"), Prometheus),
        (Some("text/plain;version=0.0.4"), Prometheus),
        (Some("application/json"), Prometheus),
        (Some("application/openmetrics-text"), OpenMetrics),
        (
            Some("application/openmetrics-text;version=1.0.0"),
            OpenMetrics,
        ),
        (
            Some("Application/OpenMetrics-Text; Version=\"1.0.0\""),
            OpenMetrics,
        ),
        (
            Some("application/openmetrics-text;version=0.0.1"),
            Prometheus,
        ),
        (Some("application/openmetrics-text;q=0"), Prometheus),
        // Prometheus's own scrape header.
        (
            Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            OpenMetrics,
        ),
        (
            Some("text/plain;q=0.9,application/openmetrics-text;q=0.5"),
            Prometheus,
        ),
        (Some("text/plain,application/openmetrics-text"), Prometheus),
    ] {
        assert_eq!(Format::from_accept(accept), format, "{accept:?}");
    }
    assert_eq!(
        Prometheus.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        OpenMetrics.content_type(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}
