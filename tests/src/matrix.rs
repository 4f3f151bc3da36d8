//! Expected and observed reachability, and the side-by-side table printed
//! on a mismatch (like the upstream e2e Reachability tables).

use std::{collections::BTreeMap, fmt::Write as _};

use crate::scenario::{Expect, Verdict};

/// A probe source or destination by its scenario name: `ns/pod`, `node`,
/// `external:NAME`, `svc:NS/NAME`.
pub type Name = String;

/// Whether a scenario pattern matches a name.
pub fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "node" || name == "node" {
        return pattern == name;
    }
    if let Some(p) = pattern.strip_prefix("external:") {
        return name
            .strip_prefix("external:")
            .is_some_and(|n| p == "*" || p == n);
    }
    if name.starts_with("external:") {
        return false;
    }
    // Services only match svc: patterns, so `*/*` stays pods only.
    match (pattern.strip_prefix("svc:"), name.strip_prefix("svc:")) {
        (Some(p), Some(n)) => ns_name_matches(p, n),
        (None, None) => ns_name_matches(pattern, name),
        _ => false,
    }
}

/// `NS/NAME` against a pattern with `*` for either part.
fn ns_name_matches(pattern: &str, name: &str) -> bool {
    let (pns, ppod) = pattern.split_once('/').unwrap_or((pattern, "*"));
    let Some((ns, pod)) = name.split_once('/') else {
        return false;
    };
    (pns == "*" || pns == ns) && (ppod == "*" || ppod == pod)
}

/// The verdict an expectation gives a pair: first matching rule, else default.
pub fn expected(e: &Expect, from: &str, to: &str) -> Verdict {
    e.rules
        .iter()
        .find(|r| matches(&r.from, from) && matches(&r.to, to))
        .map_or(e.default, |r| r.verdict)
}

/// One (port, protocol[, family]) table.
#[derive(Debug, Default)]
pub struct Table {
    pub title: String,
    pub sources: Vec<Name>,
    pub dests: Vec<Name>,
    /// (from, to) -> (expected, observed); absent: not probed.
    pub cells: BTreeMap<(Name, Name), (bool, bool)>,
}

impl Table {
    pub fn mismatches(&self) -> usize {
        self.cells.values().filter(|(e, o)| e != o).count()
    }

    fn grid(&self, out: &mut String, pick: impl Fn(bool, bool) -> String) {
        let width = self
            .sources
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = write!(out, "{:width$} ", "");
        for (i, _) in self.dests.iter().enumerate() {
            let _ = write!(out, "{:>3}", i);
        }
        out.push('\n');
        for s in &self.sources {
            let _ = write!(out, "{s:width$} ");
            for d in &self.dests {
                let cell = match self.cells.get(&(s.clone(), d.clone())) {
                    Some((e, o)) => pick(*e, *o),
                    None => ".".into(),
                };
                let _ = write!(out, "{cell:>3}");
            }
            out.push('\n');
        }
    }

    /// The observed matrix alone, for a table that matched.
    pub fn render_observed(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {} (as expected)", self.title);
        for (i, d) in self.dests.iter().enumerate() {
            let _ = writeln!(out, "  {i:>2} {d}");
        }
        self.grid(&mut out, |_, o| if o { "X".into() } else { "-".into() });
        out
    }

    /// Expected, observed and the difference, with a legend of destinations.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {} ({} mismatches)", self.title, self.mismatches());
        let _ = writeln!(out, "destinations:");
        for (i, d) in self.dests.iter().enumerate() {
            let _ = writeln!(out, "  {i:>2} {d}");
        }
        let mark = |b: bool| if b { "X".to_string() } else { "-".to_string() };
        out.push_str("expected (X = allowed, - = denied, . = not probed):\n");
        self.grid(&mut out, |e, _| mark(e));
        out.push_str("observed:\n");
        self.grid(&mut out, |_, o| mark(o));
        out.push_str("difference (! = mismatch):\n");
        self.grid(&mut out, |e, o| if e == o { "".into() } else { "!".into() });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn service_patterns_match_services_only() {
        assert!(matches("svc:*/*", "svc:x/web"));
        assert!(matches("svc:x/web", "svc:x/web"));
        assert!(matches("svc:x/*", "svc:x/web"));
        assert!(!matches("svc:y/*", "svc:x/web"));
        assert!(!matches("*/*", "svc:x/web"));
        assert!(!matches("svc:*/*", "x/web"));
        assert!(!matches("svc:*/*", "node"));
        assert!(matches("x/*", "x/a"));
    }
}
