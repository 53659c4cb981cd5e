//! containerd's filter language, as the snapshots service receives it in `List`:
//! `selector ("," selector)*`, each selector `fieldpath [op value]` with op `==`, `!=` or
//! `~=`, a fieldpath `field ("." field)*` whose fields may be quoted
//! (`labels."containerd.io/snapshot.ref"`), a value quoted or running to the next comma.
//! Selectors in one string must all hold; several strings are alternatives.
//!
//! containerd's metadata store finds a remote snapshot with
//! `labels."containerd.io/snapshot.ref"==sha256:…,parent=="<parent>"`.
//! `~=` (regular expressions) is refused rather than guessed at.

/// Longest filter string accepted.
const MAX_FILTER: usize = 64 * 1024;

/// How a selector compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The field is present (no operator).
    Present,
    /// `==`
    Equal(String),
    /// `!=`
    NotEqual(String),
}

/// One `fieldpath op value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The field path, unquoted: `["labels", "containerd.io/snapshot.ref"]`.
    pub path: Vec<String>,
    /// The comparison.
    pub op: Op,
}

/// Selectors that must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter(pub Vec<Selector>);

/// A filter string that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter {filter:?}: {reason}")]
pub struct FilterError {
    /// The string (cut to 200 characters).
    pub filter: String,
    /// What is wrong.
    pub reason: String,
}

/// Parse every filter string; none at all means everything matches.
pub fn parse_all(filters: &[String]) -> Result<Vec<Filter>, FilterError> {
    filters
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| parse(f))
        .collect()
}

/// Whether `fields` (a function from a field path to its value) passes any of `filters`
/// (or there are none).
pub fn matches_any(filters: &[Filter], fields: impl Fn(&[String]) -> Option<String>) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            f.0.iter().all(|s| match (&s.op, fields(&s.path)) {
                (Op::Present, v) => v.is_some(),
                (Op::Equal(want), Some(v)) => &v == want,
                (Op::Equal(_), None) => false,
                (Op::NotEqual(want), v) => v.as_deref() != Some(want.as_str()),
            })
        })
}

/// Parse one filter string.
pub fn parse(filter: &str) -> Result<Filter, FilterError> {
    let fail = |reason: &str| FilterError {
        filter: filter.chars().take(200).collect(),
        reason: reason.to_string(),
    };
    if filter.len() > MAX_FILTER {
        return Err(fail("too long"));
    }
    let mut p = Parser {
        s: filter.as_bytes(),
        i: 0,
    };
    let mut selectors = Vec::new();
    loop {
        p.skip_space();
        let mut path = vec![p.field().map_err(&fail)?];
        while p.eat(b".") {
            path.push(p.field().map_err(&fail)?);
        }
        // containerd reads `labels.a.b` as the label `a.b` (a label key may hold dots).
        if path.len() > 2 && path[0] == "labels" {
            let key = path[1..].join(".");
            path = vec!["labels".to_string(), key];
        }
        p.skip_space();
        let op = if p.eat(b"==") {
            Op::Equal(p.value().map_err(&fail)?)
        } else if p.eat(b"!=") {
            Op::NotEqual(p.value().map_err(&fail)?)
        } else if p.eat(b"~=") {
            return Err(fail("regular expressions (~=) are not supported"));
        } else {
            Op::Present
        };
        selectors.push(Selector { path, op });
        p.skip_space();
        if p.i == p.s.len() {
            return Ok(Filter(selectors));
        }
        if !p.eat(b",") {
            return Err(fail(&format!("unexpected character at byte {}", p.i)));
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, token: &[u8]) -> bool {
        if self.s[self.i..].starts_with(token) {
            self.i += token.len();
            true
        } else {
            false
        }
    }

    /// A field: quoted, or letters, digits, `_` and `-`.
    fn field(&mut self) -> Result<String, &'static str> {
        if self.s.get(self.i) == Some(&b'"') {
            return self.quoted();
        }
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err("expected a field name");
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A value: quoted, or everything up to the next comma (trimmed).
    fn value(&mut self) -> Result<String, &'static str> {
        self.skip_space();
        if self.s.get(self.i) == Some(&b'"') {
            return self.quoted();
        }
        let start = self.i;
        while self.s.get(self.i).is_some_and(|c| *c != b',') {
            self.i += 1;
        }
        let v = String::from_utf8_lossy(&self.s[start..self.i]).trim().to_string();
        if v.is_empty() {
            return Err("expected a value");
        }
        Ok(v)
    }

    /// A double-quoted string with Go's simple escapes.
    fn quoted(&mut self) -> Result<String, &'static str> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err("unterminated quoted string");
            };
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|_| "quoted string is not UTF-8"),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err("unterminated escape");
                    };
                    self.i += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'\\' | b'"' | b'/' | b'\'' => e,
                        _ => return Err("unknown escape in a quoted string"),
                    });
                }
                _ => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sel(path: &[&str], op: Op) -> Selector {
        Selector {
            path: path.iter().map(|s| s.to_string()).collect(),
            op,
        }
    }

    #[test]
    fn containerds_remote_snapshot_lookup() {
        let f =
            parse(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="k8s.io/3/extract-1 sha256:x""#).unwrap();
        assert_eq!(
            f.0,
            vec![
                sel(
                    &["labels", "containerd.io/snapshot.ref"],
                    Op::Equal("sha256:abc".into())
                ),
                sel(&["parent"], Op::Equal("k8s.io/3/extract-1 sha256:x".into())),
            ]
        );
        assert_eq!(
            parse(r#"parent=="""#).unwrap().0,
            vec![sel(&["parent"], Op::Equal(String::new()))]
        );
    }

    #[test]
    fn presence_inequality_and_alternatives() {
        assert_eq!(
            parse("labels.a.b==1").unwrap().0,
            vec![sel(&["labels", "a.b"], Op::Equal("1".into()))]
        );
        let filters = parse_all(&["kind==committed,labels.a".into(), "name!=x".into()]).unwrap();
        let fields = |kind: &'static str, label: Option<&'static str>, name: &'static str| {
            move |p: &[String]| match p.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["kind"] => Some(kind.to_string()),
                ["name"] => Some(name.to_string()),
                ["labels", "a"] => label.map(str::to_string),
                _ => None,
            }
        };
        assert!(matches_any(&filters, fields("committed", Some("1"), "x")));
        assert!(!matches_any(&filters, fields("active", Some("1"), "x")));
        assert!(matches_any(&filters, fields("active", None, "y")));
        assert!(matches_any(&[], fields("active", None, "x")));
    }

    #[test]
    fn bad_filters_are_refused() {
        for bad in ["", "a==", "a==\"x", "a~=b", "==b", "a b", "\"x\\q\""] {
            if bad.is_empty() {
                assert!(parse_all(&[bad.into()]).unwrap().is_empty());
            } else {
                assert!(parse(bad).is_err(), "{bad}");
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn quoted_values_round_trip(v in "[ -~]{0,40}") {
            let q = format!("name=={}", serde_json::to_string(&v).unwrap());
            prop_assert_eq!(parse(&q).unwrap().0, vec![sel(&["name"], Op::Equal(v.clone()))]);
        }
    }
}
