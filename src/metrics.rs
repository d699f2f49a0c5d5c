//! A few process counters in the Prometheus text format (`GET /metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub tokens_issued: Counter,
    pub authz_allowed: Counter,
    pub authz_denied: Counter,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "tessera_tokens_issued_total",
            "Access tokens issued.",
            &[("", self.tokens_issued.get())],
        );
        counter(
            "tessera_ext_authz_decisions_total",
            "ext_authz decisions by outcome.",
            &[
                ("{decision=\"allow\"}", self.authz_allowed.get()),
                ("{decision=\"deny\"}", self.authz_denied.get()),
            ],
        );
        out
    }
}
