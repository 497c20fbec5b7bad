//! `/metrics` for operators (issue 10): every metric with HELP and TYPE, the
//! tuning costs as real histograms, and every metric of `src/events.rs`
//! listed in `docs/operations.md`.

use std::collections::BTreeSet;

use sensorgate_test_kit::*;
use serde_json::json;

/// Metric names (`sensorgate_*`) defined in `src/events.rs`.
fn metric_names_in_events_rs() -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/events.rs"))
        .expect("src/events.rs");
    src.lines()
        .filter(|l| l.starts_with("const "))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| n.starts_with("sensorgate_"))
        .map(str::to_string)
        .collect()
}

/// The family a sample line belongs to (histogram suffixes removed).
fn family(sample: &str) -> &str {
    let name = sample.split(['{', ' ']).next().unwrap_or(sample);
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[tokio::test]
async fn every_metric_has_help_and_type_and_costs_are_histograms() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("m1").await;
    send(&mut ws, &batch(Some(1), "t", 3)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
    send(&mut ws, &json!({"seq": 2, "readings": []})).await;
    assert_eq!(recv_frame(&mut ws).await["code"], "invalid");

    let text = reqwest::get(d.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut families = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("sensorgate_")) {
        families.insert(family(line).to_string());
    }
    assert!(!families.is_empty(), "{text}");
    let defined = metric_names_in_events_rs();
    for f in &families {
        assert!(
            text.contains(&format!("# HELP {f} ")),
            "no HELP for {f}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {f} ")),
            "no TYPE for {f}:\n{text}"
        );
        assert!(defined.contains(f), "{f} is not defined in src/events.rs");
    }
    for histogram in [
        "sensorgate_store_commit_batches",
        "sensorgate_store_commit_seconds",
        "sensorgate_store_flush_seconds",
        "sensorgate_ingest_queue_wait_seconds",
        "sensorgate_ingest_outcome_wait_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is not a histogram:\n{text}"
        );
        assert!(
            text.contains(&format!("{histogram}_bucket{{le=")),
            "{histogram} has no buckets:\n{text}"
        );
    }
    assert!(
        text.contains("sensorgate_ingest_frames_rejected_total{code=\"invalid\"}"),
        "{text}"
    );
    // The per-batch and per-commit metrics go through handles registered
    // once (`events::register_hot`): they count what happened. (Other
    // tests share the process's recorder, hence at least.)
    for (sample, least) in [
        ("sensorgate_ingest_batches_accepted_total", 1.0),
        ("sensorgate_store_readings_stored_total", 3.0),
        ("sensorgate_store_commit_batches_count", 1.0),
        ("sensorgate_store_flush_seconds_count", 1.0),
        ("sensorgate_ingest_queue_wait_seconds_count", 1.0),
        ("sensorgate_ingest_outcome_wait_seconds_count", 1.0),
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {sample}:\n{text}"));
        assert!(value >= least, "{sample} = {value}:\n{text}");
    }
}

/// Histogram samples are folded into their buckets by a thread of their
/// own, whether or not anyone scrapes `/metrics` (without it they piled up:
/// BENCHMARKS.md, "Histogram samples were kept until the next scrape").
#[tokio::test]
async fn histograms_are_kept_up_without_a_scrape() {
    let _d = TestDaemon::start().await;
    let before = sensorgate::telemetry::upkeeps();
    let deadline = std::time::Instant::now() + 3 * sensorgate::telemetry::UPKEEP_EVERY;
    while sensorgate::telemetry::upkeeps() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no histogram upkeep in {:?}",
            3 * sensorgate::telemetry::UPKEEP_EVERY
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn operations_doc_lists_every_metric() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let names = metric_names_in_events_rs();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/operations.md does not list {name}"
        );
    }
}

#[test]
fn alert_rules_use_only_defined_metrics() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/sensorgate-alerts.yml"
    ))
    .expect("packaging/sensorgate-alerts.yml");
    let defined = metric_names_in_events_rs();
    let mut used = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("sensorgate_") {
            used += 1;
            assert!(
                defined.contains(family(word)),
                "the alert rules use {word}, which src/events.rs does not define"
            );
        }
    }
    assert!(used > 5, "{rules}");
}
