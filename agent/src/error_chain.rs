//! One line for an error and its causes. The crate's errors name only
//! their own part and leave the cause to `source()`, so that a cause is
//! never printed twice (`Display` and then again as "Caused by"); where an
//! error becomes a log field or a status string, this puts the parts back
//! together.

use std::error::Error;

/// `outer: cause: its cause`.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}")]
    struct Outer {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_appears_once() {
        let e = Outer {
            path: "/etc/palisade/config.yaml",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(e.to_string(), "reading /etc/palisade/config.yaml");
        assert_eq!(chain(&e), "reading /etc/palisade/config.yaml: no such file");
        let shown = format!("{:#}", anyhow::Error::new(e));
        assert_eq!(shown.matches("no such file").count(), 1, "{shown}");
    }
}
