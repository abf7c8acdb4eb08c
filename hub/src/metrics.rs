//! Counters for `/metrics` (Prometheus text format): one mutex-guarded map keyed by the rendered series
//! name. A series with labels renders its key on every call (an allocation and escaping), so hot paths
//! count per batch (`Bus::publish_all`); a series without labels is looked up without allocating.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
    gauges: Mutex<BTreeMap<String, f64>>,
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

impl Metrics {
    pub fn add(&self, name: &str, labels: &[(&str, &str)], n: u64) {
        if labels.is_empty() {
            if let Ok(mut c) = self.counters.lock() {
                match c.get_mut(name) {
                    Some(v) => *v += n,
                    None => {
                        c.insert(name.to_owned(), n);
                    }
                }
            }
            return;
        }
        let key = series(name, labels);
        if let Ok(mut c) = self.counters.lock() {
            *c.entry(key).or_default() += n;
        }
    }

    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let key = series(name, labels);
        if let Ok(mut g) = self.gauges.lock() {
            g.insert(key, value);
        }
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&series(name, labels)).copied())
            .unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut typed = std::collections::HashSet::new();
        if let Ok(c) = self.counters.lock() {
            for (k, v) in c.iter() {
                let name = k.split('{').next().unwrap_or(k);
                if typed.insert(name.to_owned()) {
                    let _ = writeln!(out, "# TYPE {name} counter");
                }
                let _ = writeln!(out, "{k} {v}");
            }
        }
        if let Ok(g) = self.gauges.lock() {
            for (k, v) in g.iter() {
                let name = k.split('{').next().unwrap_or(k);
                if typed.insert(name.to_owned()) {
                    let _ = writeln!(out, "# TYPE {name} gauge");
                }
                let _ = writeln!(out, "{k} {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_escaped_labels() {
        let m = Metrics::default();
        m.inc("hub_x_total", &[("kind", "a\"b")]);
        m.add("hub_x_total", &[("kind", "a\"b")], 2);
        m.set("hub_depth", &[], 4.0);
        m.add("hub_plain_total", &[], 2);
        m.inc("hub_plain_total", &[]);
        assert_eq!(m.get("hub_plain_total", &[]), 3);
        let text = m.render();
        assert!(
            text.contains("# TYPE hub_x_total counter\nhub_x_total{kind=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("hub_depth 4"), "{text}");
        assert_eq!(m.get("hub_x_total", &[("kind", "a\"b")]), 3);
    }
}
