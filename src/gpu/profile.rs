//! Per-kernel GPU time from timestamp queries (native only, for `janusflow bench --profile`).
//!
//! When enabled, the recorder puts every dispatch in its own compute pass with a timestamp at
//! its start and end, and after the submit reads the timestamps back and adds each dispatch's
//! time to its pipeline's total. This serialises the GPU work a little and waits after each
//! submit, so wall-clock figures taken while profiling are not the engine's real speed.

use std::collections::BTreeMap;

/// Totals per pipeline key (shader file and defines).
#[derive(Default, Clone, Debug)]
pub struct Profile {
    /// key -> (dispatches, nanoseconds)
    pub kernels: BTreeMap<String, (u64, f64)>,
}

impl Profile {
    pub fn add(&mut self, key: &str, ns: f64) {
        let e = self.kernels.entry(key.to_string()).or_default();
        e.0 += 1;
        e.1 += ns;
    }

    pub fn total_ns(&self) -> f64 {
        self.kernels.values().map(|v| v.1).sum()
    }

    /// A table of the kernels by total time, largest first.
    pub fn table(&self, per: f64, per_name: &str) -> String {
        let mut rows: Vec<_> = self.kernels.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total = self.total_ns();
        let mut s = format!("  {:>10} {:>6} {:>9} {:>10}  kernel\n", format!("ms/{per_name}"), "share", "calls", "µs/call");
        for (k, (n, ns)) in rows {
            s += &format!("  {:>10.3} {:>5.1}% {:>9.1} {:>10.1}  {k}\n", ns / 1e6 / per, 100.0 * ns / total, *n as f64 / per, ns / 1e3 / *n as f64);
        }
        s += &format!("  {:>10.3} GPU ms per {per_name} in kernels\n", total / 1e6 / per);
        s
    }
}
