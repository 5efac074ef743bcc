//! Metrics: per-core counters, gauges and histograms, aggregated over all workers when
//! scraped, and their Prometheus text exposition (`text`).

pub mod text;
