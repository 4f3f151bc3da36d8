//! Calico selector expressions (projectcalico.org/v3): the language of the
//! `selector`, `namespaceSelector`, `notSelector` and `serviceAccountSelector`
//! fields, parsed once into a validated tree and matched often.
//!
//! ```text
//! all()                       every resource ("" and blank mean the same)
//! has(k)          !has(k)     label k present / absent
//! k == "v"                    k present with value v
//! k != "v"                    k absent, or present with another value
//! k in {"a", "b"}             k present with one of the values
//! k not in {"a", "b"}         k absent, or present with none of the values
//! k contains "s"              k present, value contains s
//! k starts with "p"           k present, value starts with p
//! k ends with "s"             k present, value ends with s
//! !e    e && e    e || e    ( e )
//! ```
//!
//! Strings take double or single quotes and have no escapes (a string cannot
//! hold its own quote character). `!` binds tighter than `&&`, which binds
//! tighter than `||`. Label keys are made of letters, digits and `_ . / -`
//! (`kubernetes.io/metadata.name`).
//!
//! Input is bounded ([`MAX_LEN`] bytes, [`MAX_DEPTH`] levels of `(` and `!`)
//! so that a hostile object can neither exhaust the stack of the parser nor
//! that of the recursive matcher, printer and destructor.

use std::{collections::BTreeSet, fmt, str::FromStr};

use crate::model::Labels;

/// Longest selector accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses and negations accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a selector was rejected. `at` is a byte offset into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalicoSelectorError {
    #[error("selector is {len} bytes long, longer than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("at {at}: nesting deeper than {max} levels of parentheses and negations")]
    TooDeep { at: usize, max: usize },
    #[error("at {at}: expected {expected}, found {found}")]
    Expected {
        at: usize,
        expected: &'static str,
        found: String,
    },
    #[error("at {at}: unterminated string (no closing {quote})")]
    UnterminatedString { at: usize, quote: char },
    #[error("at {at}: {what} is not supported")]
    Unsupported { at: usize, what: &'static str },
}

/// One node of a selector. Built only by the parser, which flattens nested
/// conjunctions and disjunctions: `And` and `Or` have at least two terms and
/// none of them is of their own kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expr {
    All,
    Has(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = |k: &String| labels.get(k).map(String::as_str);
        match self {
            Expr::All => true,
            Expr::Has(k) => labels.contains_key(k),
            Expr::Equals(k, v) => value(k) == Some(v.as_str()),
            Expr::NotEquals(k, v) => value(k) != Some(v.as_str()),
            Expr::In(k, vs) => value(k).is_some_and(|x| vs.contains(x)),
            Expr::NotIn(k, vs) => !value(k).is_some_and(|x| vs.contains(x)),
            Expr::Contains(k, s) => value(k).is_some_and(|x| x.contains(s.as_str())),
            Expr::StartsWith(k, s) => value(k).is_some_and(|x| x.starts_with(s.as_str())),
            Expr::EndsWith(k, s) => value(k).is_some_and(|x| x.ends_with(s.as_str())),
            Expr::Not(e) => !e.matches(labels),
            Expr::And(es) => es.iter().all(|e| e.matches(labels)),
            Expr::Or(es) => es.iter().any(|e| e.matches(labels)),
        }
    }

    /// Binding strength when printed: 0 `||`, 1 `&&`, 2 everything else.
    fn precedence(&self) -> u8 {
        match self {
            Expr::Or(_) => 0,
            Expr::And(_) => 1,
            _ => 2,
        }
    }

    /// Prints `self`, in parentheses when it binds looser than `min`.
    fn fmt_within(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            f.write_str("(")?;
            fmt::Display::fmt(self, f)?;
            f.write_str(")")
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

/// A string literal in the quotes that can hold it (double unless it has a
/// double quote; the parser never produces a string with both).
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = if self.0.contains('"') { '\'' } else { '"' };
        write!(f, "{q}{}{q}", self.0)
    }
}

struct Set<'a>(&'a BTreeSet<String>);

impl fmt::Display for Set<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", Quoted(v))?;
        }
        f.write_str("}")
    }
}

/// The canonical form: single spaces around binary operators, double quotes
/// where possible, sets sorted without duplicates, parentheses only where
/// precedence needs them.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Has(k) => write!(f, "has({k})"),
            Expr::Equals(k, v) => write!(f, "{k} == {}", Quoted(v)),
            Expr::NotEquals(k, v) => write!(f, "{k} != {}", Quoted(v)),
            Expr::In(k, vs) => write!(f, "{k} in {}", Set(vs)),
            Expr::NotIn(k, vs) => write!(f, "{k} not in {}", Set(vs)),
            Expr::Contains(k, v) => write!(f, "{k} contains {}", Quoted(v)),
            Expr::StartsWith(k, v) => write!(f, "{k} starts with {}", Quoted(v)),
            Expr::EndsWith(k, v) => write!(f, "{k} ends with {}", Quoted(v)),
            Expr::Not(e) => {
                f.write_str("!")?;
                e.fmt_within(f, 2)
            }
            Expr::And(es) | Expr::Or(es) => {
                let (sep, min) = match self {
                    Expr::And(_) => (" && ", 1),
                    _ => (" || ", 0),
                };
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    e.fmt_within(f, min)?;
                }
                Ok(())
            }
        }
    }
}

/// A parsed, validated Calico selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CalicoSelector {
    expr: Expr,
}

impl CalicoSelector {
    /// `all()`.
    pub fn all() -> Self {
        Self { expr: Expr::All }
    }

    /// Parses a selector; the empty (or blank) string is `all()`, as Calico
    /// reads it in selector fields.
    pub fn parse(input: &str) -> Result<Self, CalicoSelectorError> {
        if input.len() > MAX_LEN {
            return Err(CalicoSelectorError::TooLong {
                len: input.len(),
                max: MAX_LEN,
            });
        }
        let mut p = Parser {
            src: input,
            pos: 0,
            depth: 0,
        };
        p.skip_ws();
        if p.at_end() {
            return Ok(Self::all());
        }
        let expr = p.or()?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.expected("`&&`, `||` or the end of the selector"));
        }
        Ok(Self { expr })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.expr.matches(labels)
    }

    /// Whether this is literally `all()` (or was empty); an expression that
    /// happens to match everything, such as `!!all()`, is not.
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }
}

impl Default for CalicoSelector {
    fn default() -> Self {
        Self::all()
    }
}

impl fmt::Display for CalicoSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl FromStr for CalicoSelector {
    type Err = CalicoSelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Open parentheses and negations around the current position.
    depth: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// What is at the current position, for error messages.
    fn found(&self) -> String {
        match self.rest().chars().next() {
            None => "the end of the selector".to_string(),
            Some(_) => {
                let word: String = self.rest().chars().take(12).collect();
                let word = word.split_whitespace().next().unwrap_or_default();
                format!("{word:?}")
            }
        }
    }

    fn expected(&self, expected: &'static str) -> CalicoSelectorError {
        CalicoSelectorError::Expected {
            at: self.pos,
            expected,
            found: self.found(),
        }
    }

    /// Skips whitespace, then consumes `token` if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str, what: &'static str) -> Result<(), CalicoSelectorError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    /// Consumes the word `kw` if it comes next as a whole word.
    fn eat_keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with(kw) && !rest[kw.len()..].starts_with(is_key_char) {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self, at: usize) -> Result<(), CalicoSelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CalicoSelectorError::TooDeep { at, max: MAX_DEPTH });
        }
        Ok(())
    }

    /// or := and ("||" and)*
    fn or(&mut self) -> Result<Expr, CalicoSelectorError> {
        let mut terms = Vec::new();
        loop {
            match self.and()? {
                Expr::Or(inner) => terms.extend(inner),
                e => terms.push(e),
            }
            if !self.eat("||") {
                break;
            }
        }
        Ok(if terms.len() == 1 {
            terms.swap_remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    /// and := unary ("&&" unary)*
    fn and(&mut self) -> Result<Expr, CalicoSelectorError> {
        let mut terms = Vec::new();
        loop {
            match self.unary()? {
                Expr::And(inner) => terms.extend(inner),
                e => terms.push(e),
            }
            if !self.eat("&&") {
                break;
            }
        }
        Ok(if terms.len() == 1 {
            terms.swap_remove(0)
        } else {
            Expr::And(terms)
        })
    }

    /// unary := "!" unary | "(" or ")" | primary
    fn unary(&mut self) -> Result<Expr, CalicoSelectorError> {
        self.skip_ws();
        let at = self.pos;
        // `!=` never starts an expression, so a `!` here is a negation.
        if self.eat("!") {
            self.enter(at)?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        if self.eat("(") {
            self.enter(at)?;
            let e = self.or()?;
            self.expect(")", "`)`")?;
            self.depth -= 1;
            return Ok(e);
        }
        self.primary()
    }

    fn key(&mut self) -> Result<String, CalicoSelectorError> {
        self.skip_ws();
        let rest = self.rest();
        let len = rest.find(|c| !is_key_char(c)).unwrap_or(rest.len());
        if len == 0 {
            return Err(self.expected("a label key"));
        }
        let key = rest[..len].to_string();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, CalicoSelectorError> {
        self.skip_ws();
        let at = self.pos;
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.expected("a quoted string")),
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(quote) else {
            return Err(CalicoSelectorError::UnterminatedString { at, quote });
        };
        let s = body[..end].to_string();
        self.pos += 1 + end + 1;
        Ok(s)
    }

    /// set := "{" [string ("," string)*] "}"
    fn set(&mut self) -> Result<BTreeSet<String>, CalicoSelectorError> {
        self.expect("{", "`{`")?;
        let mut values = BTreeSet::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.insert(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            self.expect(",", "`,` or `}`")?;
        }
    }

    /// primary := "all()" | "has(" key ")" | key operator
    fn primary(&mut self) -> Result<Expr, CalicoSelectorError> {
        self.skip_ws();
        let at = self.pos;
        let word = self
            .key()
            .map_err(|_| self.expected("a selector expression"))?;
        // A function name only when a `(` follows; otherwise it is a key.
        if self.eat("(") {
            return match word.as_str() {
                "all" => {
                    self.expect(")", "`)`")?;
                    Ok(Expr::All)
                }
                "has" => {
                    let key = self.key()?;
                    self.expect(")", "`)`")?;
                    Ok(Expr::Has(key))
                }
                "global" => Err(CalicoSelectorError::Unsupported {
                    at,
                    what: "global()",
                }),
                _ => Err(CalicoSelectorError::Expected {
                    at,
                    expected: "`all()`, `has(..)` or a label key",
                    found: format!("{word:?}"),
                }),
            };
        }
        let key = word;
        if self.eat("==") {
            return Ok(Expr::Equals(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::NotEquals(key, self.string()?));
        }
        if self.eat_keyword("in") {
            return Ok(Expr::In(key, self.set()?));
        }
        if self.eat_keyword("not") {
            if !self.eat_keyword("in") {
                return Err(self.expected("`in` after `not`"));
            }
            return Ok(Expr::NotIn(key, self.set()?));
        }
        if self.eat_keyword("contains") {
            return Ok(Expr::Contains(key, self.string()?));
        }
        if self.eat_keyword("starts") {
            if !self.eat_keyword("with") {
                return Err(self.expected("`with` after `starts`"));
            }
            return Ok(Expr::StartsWith(key, self.string()?));
        }
        if self.eat_keyword("ends") {
            if !self.eat_keyword("with") {
                return Err(self.expected("`with` after `ends`"));
            }
            return Ok(Expr::EndsWith(key, self.string()?));
        }
        Err(self.expected(
            "an operator (`==`, `!=`, `in`, `not in`, `contains`, `starts with`, `ends with`)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sel(s: &str) -> CalicoSelector {
        match CalicoSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match CalicoSelector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel}"),
            Err(e) => e.to_string(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn matches(s: &str, pairs: &[(&str, &str)]) -> bool {
        sel(s).matches(&labels(pairs))
    }

    #[test]
    fn all_and_empty() {
        for s in ["all()", "", "   ", " all ( ) ", "\tall()\n"] {
            let sel = sel(s);
            assert!(sel.is_all(), "{s:?}");
            assert!(sel.matches(&Labels::new()));
            assert!(sel.matches(&labels(&[("a", "b")])));
            assert_eq!(sel.to_string(), "all()");
        }
        assert!(!matches("!all()", &[]));
        assert!(!sel("!all()").is_all());
        assert!(!sel("has(a)").is_all());
        assert!(CalicoSelector::default().is_all());
    }

    #[test]
    fn has() {
        assert!(matches("has(a)", &[("a", "")]));
        assert!(!matches("has(a)", &[("b", "x")]));
        assert!(matches("!has(a)", &[("b", "x")]));
        assert!(!matches("!has(a)", &[("a", "x")]));
        assert!(matches(
            " has( kubernetes.io/metadata.name ) ",
            &[(NS, "x")]
        ));
        assert_eq!(sel("! has ( a )").to_string(), "!has(a)");
    }

    const NS: &str = "kubernetes.io/metadata.name";

    #[test]
    fn equality() {
        assert!(matches("a == \"x\"", &[("a", "x")]));
        assert!(!matches("a == \"x\"", &[("a", "y")]));
        assert!(!matches("a == \"x\"", &[]));
        assert!(matches("a == \"\"", &[("a", "")]));
        assert!(!matches("a == \"\"", &[]));
        // != matches an absent key.
        assert!(matches("a != \"x\"", &[]));
        assert!(matches("a != \"x\"", &[("a", "y")]));
        assert!(!matches("a != \"x\"", &[("a", "x")]));
        assert!(matches("a!='x'", &[("b", "x")]));
        assert!(matches("a=='x'", &[("a", "x")]));
    }

    #[test]
    fn sets() {
        let s = "k in {\"a\", 'b'}";
        assert!(matches(s, &[("k", "a")]));
        assert!(matches(s, &[("k", "b")]));
        assert!(!matches(s, &[("k", "c")]));
        assert!(!matches(s, &[]));
        let s = "k not in {\"a\", \"b\"}";
        assert!(matches(s, &[]));
        assert!(matches(s, &[("k", "c")]));
        assert!(!matches(s, &[("k", "a")]));
        assert!(!matches("k in {}", &[("k", "a")]));
        assert!(matches("k not in {}", &[("k", "a")]));
        assert!(matches("k not   in{'a'}", &[("k", "b")]));
        assert_eq!(
            sel("k in {'b','a', \"b\" }").to_string(),
            "k in {\"a\", \"b\"}"
        );
        assert_eq!(sel("k not in{}").to_string(), "k not in {}");
    }

    #[test]
    fn string_operators() {
        assert!(matches("k contains \"ell\"", &[("k", "hello")]));
        assert!(!matches("k contains \"xyz\"", &[("k", "hello")]));
        assert!(!matches("k contains \"\"", &[]));
        assert!(matches("k contains \"\"", &[("k", "")]));
        assert!(matches("k starts with 'he'", &[("k", "hello")]));
        assert!(!matches("k starts with 'lo'", &[("k", "hello")]));
        assert!(!matches("k starts with 'he'", &[]));
        assert!(matches("k ends with \"lo\"", &[("k", "hello")]));
        assert!(!matches("k ends with \"he\"", &[("k", "hello")]));
        assert!(!matches("k ends with \"lo\"", &[("j", "hello")]));
        assert_eq!(
            sel("k  starts\twith 'p' && k ends  with 's' && k contains 'c'").to_string(),
            "k starts with \"p\" && k ends with \"s\" && k contains \"c\""
        );
    }

    #[test]
    fn boolean_operators_and_precedence() {
        // ! binds tighter than &&, && tighter than ||.
        let s = "!has(a) || a starts with 'prod' && role in {'frontend','business'}";
        let e = sel(s);
        assert_eq!(
            e.to_string(),
            "!has(a) || a starts with \"prod\" && role in {\"business\", \"frontend\"}"
        );
        assert!(matches!(e.expr(), Expr::Or(terms) if terms.len() == 2
            && matches!(terms[1], Expr::And(_))));
        assert!(e.matches(&labels(&[])));
        assert!(e.matches(&labels(&[("a", "prod-1"), ("role", "frontend")])));
        assert!(!e.matches(&labels(&[("a", "prod-1")])));
        assert!(!e.matches(&labels(&[("a", "dev"), ("role", "frontend")])));

        assert!(matches("has(a) && has(b) || has(c)", &[("c", "")]));
        assert!(!matches("has(a) && (has(b) || has(c))", &[("c", "")]));
        // ! applies to the atom, not to the conjunction.
        assert!(matches("!has(a) && has(b)", &[("b", "")]));
        assert!(!matches("!(has(a) && has(b))", &[("a", ""), ("b", "")]));
        assert!(matches("!(has(a) && has(b))", &[("b", "")]));
        assert!(matches("!!has(a)", &[("a", "")]));
        assert_eq!(
            sel("!(has(a) && has(b))").to_string(),
            "!(has(a) && has(b))"
        );
        assert_eq!(sel("!(has(a))").to_string(), "!has(a)");
        assert_eq!(
            sel("(has(a) || has(b)) && has(c)").to_string(),
            "(has(a) || has(b)) && has(c)"
        );
        // Parentheses that precedence does not need disappear; same-kind
        // groups are flattened.
        assert_eq!(
            sel("((has(a) && has(b))) && (has(c) && (has(d)))").to_string(),
            "has(a) && has(b) && has(c) && has(d)"
        );
        assert_eq!(
            sel("(has(a) && has(b)) || has(c)").to_string(),
            "has(a) && has(b) || has(c)"
        );
        assert_eq!(
            sel("has(a)||(has(b)||has(c))").expr(),
            sel("has(a) || has(b) || has(c)").expr()
        );
    }

    #[test]
    fn quoting() {
        assert!(matches("k == 'say \"hi\"'", &[("k", "say \"hi\"")]));
        assert!(matches("k == \"it's\"", &[("k", "it's")]));
        assert_eq!(sel("k == 'v'").to_string(), "k == \"v\"");
        assert_eq!(sel("k == 'say \"hi\"'").to_string(), "k == 'say \"hi\"'");
        assert_eq!(sel("k == \"it's\"").to_string(), "k == \"it's\"");
        // Operators inside strings are just text.
        assert!(matches("k == '&& || ! ) ('", &[("k", "&& || ! ) (")]));
        assert!(matches("k == \"ü\"", &[("k", "ü")]));
    }

    #[test]
    fn keys() {
        for k in [
            "kubernetes.io/metadata.name",
            "projectcalico.org/name",
            "app.kubernetes.io/part-of",
            "a_b",
            "3d",
            // Function and operator names are keys where a key is expected.
            "has",
            "all",
            "in",
            "not",
        ] {
            let s = format!("{k} == \"v\"");
            assert!(matches(&s, &[(k, "v")]), "{s}");
            assert_eq!(sel(&s).to_string(), s);
        }
        assert!(matches("has(has)", &[("has", "")]));
    }

    #[test]
    fn seed_scenario_forms() {
        let s = sel(
            "kubernetes.io/metadata.name not in {\"calico-system\", \"kube-public\", \"kube-system\", \"tigera-operator\"}",
        );
        assert!(s.matches(&labels(&[(NS, "default")])));
        assert!(!s.matches(&labels(&[(NS, "kube-system")])));
        assert!(s.matches(&labels(&[])));
        assert!(matches(
            "k8s-app == \"kube-dns\"",
            &[("k8s-app", "kube-dns")]
        ));
        assert!(sel("all()").is_all());
        assert!(matches("role == \"ingress\"", &[("role", "ingress")]));
        assert!(!matches("app == \"wordpress\"", &[("app", "mysql")]));
        let ns = sel("kubernetes.io/metadata.name == \"wordpress\"");
        assert!(ns.matches(&labels(&[(NS, "wordpress")])));
        assert!(!ns.matches(&labels(&[(NS, "default")])));
    }

    #[test]
    fn errors_say_where_and_what() {
        assert_eq!(err("a == b"), "at 5: expected a quoted string, found \"b\"");
        assert_eq!(
            err("k8s-app == "),
            "at 11: expected a quoted string, found the end of the selector"
        );
        assert_eq!(err("a == \"x"), "at 5: unterminated string (no closing \")");
        assert!(err("has(a) has(b)").starts_with("at 7: expected `&&`, `||` or the end"));
        assert!(err("has(a) & has(b)").starts_with("at 7: expected `&&`, `||`"));
        assert!(err("has(a) &&").starts_with("at 9: expected a selector expression"));
        assert!(err("(has(a)").starts_with("at 7: expected `)`"));
        assert!(err("has(a))").starts_with("at 6: expected `&&`"));
        assert!(err("has()").starts_with("at 4: expected a label key"));
        assert!(err("a").starts_with("at 1: expected an operator"));
        assert!(err("a = 'x'").starts_with("at 2: expected an operator"));
        assert!(err("a not 'x'").starts_with("at 6: expected `in` after `not`"));
        assert!(err("a notin {'x'}").starts_with("at 2: expected an operator"));
        assert!(err("a starts 'x'").starts_with("at 9: expected `with` after `starts`"));
        assert!(err("a ends 'x'").starts_with("at 7: expected `with` after `ends`"));
        assert!(err("a in 'x'").starts_with("at 5: expected `{`"));
        assert!(err("a in {'x' 'y'}").starts_with("at 10: expected `,` or `}`"));
        assert!(err("a in {'x',}").starts_with("at 10: expected a quoted string"));
        assert!(err("a in {'x', y}").starts_with("at 11: expected a quoted string"));
        assert!(err("foo(a)").starts_with("at 0: expected `all()`, `has(..)`"));
        assert_eq!(err("global()"), "at 0: global() is not supported");
        assert!(err("all(x)").starts_with("at 4: expected `)`"));
        assert!(err("== 'x'").starts_with("at 0: expected a selector expression"));
        assert!(err("!").starts_with("at 1: expected a selector expression"));
        assert!(err("a == 'x' || ").starts_with("at 12: expected a selector expression"));
    }

    #[test]
    fn bounds() {
        let deep = |n: usize| format!("{}has(a){}", "(".repeat(n), ")".repeat(n));
        assert!(sel(&deep(MAX_DEPTH)).matches(&labels(&[("a", "")])));
        assert_eq!(
            err(&deep(MAX_DEPTH + 1)),
            format!(
                "at {MAX_DEPTH}: nesting deeper than {MAX_DEPTH} levels of parentheses and negations"
            )
        );
        let nots = |n: usize| format!("{}has(a)", "!".repeat(n));
        assert!(sel(&nots(MAX_DEPTH)).matches(&labels(&[("a", "")])));
        assert!(err(&nots(MAX_DEPTH + 1)).contains("nesting deeper"));
        // Mixed, and far past the bound: an error, not a stack overflow.
        assert!(err(&"!(".repeat(2000)).contains("nesting deeper"));
        assert!(err(&"(".repeat(MAX_LEN)).contains("nesting deeper"));
        // Long but flat is fine up to the length bound.
        let mut long = "has(a)".to_string();
        while long.len() + 10 <= MAX_LEN {
            long.push_str(" || has(a)");
        }
        assert!(sel(&long).matches(&labels(&[("a", "")])));
        let too_long = format!("{long}{}", " ".repeat(MAX_LEN + 1 - long.len()));
        assert_eq!(
            err(&too_long),
            format!(
                "selector is {} bytes long, longer than the {MAX_LEN} allowed",
                MAX_LEN + 1
            )
        );
    }

    #[test]
    fn from_str() {
        let s: CalicoSelector = "has(a)".parse().expect("valid");
        assert_eq!(s, sel("has(a)"));
        assert!("has(".parse::<CalicoSelector>().is_err());
    }

    // Random trees, printed, parsed back.

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string),
            "[a-z0-9][a-z0-9./_-]{0,6}",
            Just(NS.to_string()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        // A string may hold one kind of quote, never both.
        prop_oneof![
            prop::sample::select(vec!["", "x", "y", "xy"]).prop_map(str::to_string),
            "[xy \"&|!(){},]{0,4}",
            "[xy '&|!(){},]{0,4}",
        ]
    }

    fn expr() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![
            Just(Expr::All),
            key().prop_map(Expr::Has),
            (key(), value()).prop_map(|(k, v)| Expr::Equals(k, v)),
            (key(), value()).prop_map(|(k, v)| Expr::NotEquals(k, v)),
            (key(), prop::collection::btree_set(value(), 0..3)).prop_map(|(k, v)| Expr::In(k, v)),
            (key(), prop::collection::btree_set(value(), 0..3))
                .prop_map(|(k, v)| Expr::NotIn(k, v)),
            (key(), value()).prop_map(|(k, v)| Expr::Contains(k, v)),
            (key(), value()).prop_map(|(k, v)| Expr::StartsWith(k, v)),
            (key(), value()).prop_map(|(k, v)| Expr::EndsWith(k, v)),
        ];
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
            ]
        })
    }

    fn label_set() -> impl Strategy<Value = Labels> {
        prop::collection::btree_map(key(), value(), 0..5)
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(e in expr(), sets in prop::collection::vec(label_set(), 8)) {
            let printed = e.to_string();
            let parsed = CalicoSelector::parse(&printed)
                .map_err(|err| TestCaseError::fail(format!("{printed:?}: {err}")))?;
            // The canonical form is a fixed point.
            prop_assert_eq!(parsed.to_string(), printed.clone());
            prop_assert_eq!(CalicoSelector::parse(&parsed.to_string()).ok(), Some(parsed.clone()));
            for l in &sets {
                prop_assert_eq!(parsed.matches(l), e.matches(l), "{} on {:?}", printed, l);
            }
        }

        #[test]
        fn parse_never_panics(s in "[a-z()!&|=' \"{},]{0,40}") {
            let _ = CalicoSelector::parse(&s);
        }
    }
}
