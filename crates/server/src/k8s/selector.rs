//! Field and label selectors (`?fieldSelector=metadata.name=x`, `?labelSelector=app=web,tier!=db`).

use serde_json::Value;

use super::str_at;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("invalid selector {0:?}")]
    Invalid(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldTerm {
    Eq(String, String),
    Ne(String, String),
}

/// A parsed `fieldSelector`. Supported fields: `metadata.name`, `metadata.namespace`,
/// `spec.nodeName`, `status.phase`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

const FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"];

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value, negate) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, v, false)
            } else {
                return Err(SelectorError::Invalid(s.to_string()));
            };
            let key = key.trim();
            if !FIELDS.contains(&key) {
                return Err(SelectorError::UnsupportedField(key.to_string()));
            }
            let (k, v) = (key.to_string(), value.trim().to_string());
            terms.push(if negate { FieldTerm::Ne(k, v) } else { FieldTerm::Eq(k, v) });
        }
        Ok(FieldSelector { terms })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let (key, want, eq) = match t {
                FieldTerm::Eq(k, v) => (k, v, true),
                FieldTerm::Ne(k, v) => (k, v, false),
            };
            let path: Vec<&str> = key.split('.').collect();
            (str_at(obj, &path) == want) == eq
        })
    }

    /// The name an `metadata.name=x` term pins, if any.
    pub fn name(&self) -> Option<&str> {
        self.terms.iter().find_map(|t| match t {
            FieldTerm::Eq(k, v) if k == "metadata.name" => Some(v.as_str()),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector` (equality and set-based requirements).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<LabelTerm>,
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 317 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let bad = || SelectorError::Invalid(s.to_string());
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let set = |rest: &str| -> Result<Vec<String>, SelectorError> {
                let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(bad)?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let parsed = if let Some(key) = term.strip_prefix('!') {
                LabelTerm::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::Ne(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelTerm::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelTerm::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                LabelTerm::NotIn(k.trim().to_string(), set(rest)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                LabelTerm::In(k.trim().to_string(), set(rest)?)
            } else {
                LabelTerm::Exists(term.trim().to_string())
            };
            let key = match &parsed {
                LabelTerm::Eq(k, _)
                | LabelTerm::Ne(k, _)
                | LabelTerm::Exists(k)
                | LabelTerm::NotExists(k)
                | LabelTerm::In(k, _)
                | LabelTerm::NotIn(k, _) => k,
            };
            if !valid_key(key) {
                return Err(bad());
            }
            terms.push(parsed);
        }
        Ok(LabelSelector { terms })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.terms.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::Ne(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn fields() {
        let pod = json!({"metadata": {"name": "x", "namespace": "default"}, "spec": {"nodeName": "n1"}});
        assert!(FieldSelector::parse("metadata.name=x").unwrap().matches(&pod));
        assert!(FieldSelector::parse("metadata.name==x,spec.nodeName=n1").unwrap().matches(&pod));
        assert!(!FieldSelector::parse("metadata.name!=x").unwrap().matches(&pod));
        assert!(FieldSelector::parse("").unwrap().matches(&pod));
        assert_eq!(FieldSelector::parse("metadata.name=x").unwrap().name(), Some("x"));
        assert!(matches!(FieldSelector::parse("spec.bogus=1"), Err(SelectorError::UnsupportedField(_))));
        assert!(FieldSelector::parse("novalue").is_err());
    }

    #[test]
    fn labels() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("missing notin (x)", true),
            ("app=db", false),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&pod), want, "{sel}");
        }
        assert!(LabelSelector::parse("a in b").is_err());
    }
}
