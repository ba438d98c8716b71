//! Label and field selectors, parsed and matched as the Kubernetes API server
//! does (`k8s.io/apimachinery/pkg/labels` and `.../fields`).
//!
//! Label selectors support every requirement form of the real grammar:
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1` and
//! `k<1`, joined by commas (AND). Field selectors support `f=v`, `f==v` and
//! `f!=v` joined by commas, over the fields each kind exposes.

use serde_json::Value;

/// Why a selector could not be parsed; the text becomes the message of a
/// `400 BadRequest` Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    /// `k=v` / `k==v` (and `k in (v)`): the label exists with that value.
    In(String, Vec<String>),
    /// `k!=v` / `k notin (a,b)`: the label is absent or has another value.
    NotIn(String, Vec<String>),
    /// `k`: the label exists.
    Exists(String),
    /// `!k`: the label is absent.
    DoesNotExist(String),
    /// `k>n`: the label is an integer greater than n.
    Gt(String, i64),
    /// `k<n`: the label is an integer less than n.
    Lt(String, i64),
}

/// A parsed label selector: all requirements must hold. The empty selector
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    SelectorError(format!(
                        "unable to parse requirement: unbalanced ')' in {s:?}"
                    ))
                })?;
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!(
            "unable to parse requirement: unbalanced '(' in {s:?}"
        )));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    if key.is_empty() || !key.chars().all(is_key_char) {
        return Err(SelectorError(format!(
            "unable to parse requirement: invalid label key {key:?}"
        )));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), SelectorError> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(SelectorError(format!(
            "unable to parse requirement: invalid label value: {value:?}"
        )));
    }
    Ok(())
}

/// Parses `( a, b, c )` into its values.
fn parse_set(rest: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError(format!(
                "unable to parse requirement: found {rest:?}, expected: '('"
            ))
        })?;
    let mut values = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        validate_value(v)?;
        values.push(v.to_string());
    }
    Ok(values)
}

/// Whether `rest` starts with the word `word` followed by a space or `(`.
fn strip_word<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(word)?;
    if after.starts_with(|c: char| c.is_whitespace() || c == '(') {
        Some(after)
    } else {
        None
    }
}

fn parse_requirement(part: &str) -> Result<LabelReq, SelectorError> {
    let part = part.trim();
    if part.is_empty() {
        return Err(SelectorError(
            "unable to parse requirement: found '', expected: identifier".to_string(),
        ));
    }
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        validate_key(key)?;
        return Ok(LabelReq::DoesNotExist(key.to_string()));
    }
    let key_end = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
    let key = &part[..key_end];
    validate_key(key)?;
    let key = key.to_string();
    let rest = part[key_end..].trim_start();
    if rest.is_empty() {
        return Ok(LabelReq::Exists(key));
    }
    let single = |v: &str| -> Result<Vec<String>, SelectorError> {
        let v = v.trim();
        validate_value(v)?;
        Ok(vec![v.to_string()])
    };
    let int = |v: &str| -> Result<i64, SelectorError> {
        v.trim().parse::<i64>().map_err(|_| {
            SelectorError(format!(
                "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer, got {:?}",
                v.trim()
            ))
        })
    };
    if let Some(v) = rest.strip_prefix("!=") {
        Ok(LabelReq::NotIn(key, single(v)?))
    } else if let Some(v) = rest.strip_prefix("==") {
        Ok(LabelReq::In(key, single(v)?))
    } else if let Some(v) = rest.strip_prefix('=') {
        Ok(LabelReq::In(key, single(v)?))
    } else if let Some(v) = rest.strip_prefix('>') {
        Ok(LabelReq::Gt(key, int(v)?))
    } else if let Some(v) = rest.strip_prefix('<') {
        Ok(LabelReq::Lt(key, int(v)?))
    } else if let Some(v) = strip_word(rest, "notin") {
        Ok(LabelReq::NotIn(key, parse_set(v)?))
    } else if let Some(v) = strip_word(rest, "in") {
        Ok(LabelReq::In(key, parse_set(v)?))
    } else {
        Err(SelectorError(format!(
            "unable to parse requirement: found {rest:?}, expected: in, notin, =, ==, !=, gt, lt"
        )))
    }
}

impl LabelSelector {
    /// Parses a `labelSelector` query value. The empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let reqs = split_top_level(s)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { reqs })
    }

    /// Whether an object with these labels (`metadata.labels`, possibly absent) matches.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            LabelReq::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::DoesNotExist(k) => get(k).is_none(),
            LabelReq::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed field selector: all terms must hold. The empty selector matches
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<FieldReq>,
}

/// Splits on unescaped commas, keeping escapes for the term parser.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

fn unescape_field_value(v: &str) -> Result<String, SelectorError> {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                _ => {
                    return Err(SelectorError(format!("invalid field selector: {v:?}")));
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value, checking every field against the
    /// fields that `kind` supports.
    pub fn parse(s: &str, kind: &str) -> Result<Self, SelectorError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut reqs = Vec::new();
        for term in split_unescaped(s, ',') {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(kind).contains(&field) {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            reqs.push(FieldReq {
                field: field.to_string(),
                value: unescape_field_value(value.trim())?,
                equal,
            });
        }
        Ok(Self { reqs })
    }

    /// Whether the object (its JSON form) matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) == r.equal
        })
    }
}

/// The field selector labels a kind supports, as registered by the real API
/// server (every kind has `metadata.name` and `metadata.namespace`).
fn supported_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Namespace" => &["metadata.name", "metadata.namespace", "status.phase"],
        "Node" => &["metadata.name", "metadata.namespace", "spec.unschedulable"],
        "Secret" => &["metadata.name", "metadata.namespace", "type"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

/// The string value of a selectable field, with the defaults the real server
/// uses for absent values (empty string, or `false` for booleans).
fn field_value(obj: &Value, field: &str) -> String {
    if field == "status.podIP" {
        // The real server selects on the first entry of status.podIPs.
        let ip = obj.pointer("/status/podIP").and_then(Value::as_str);
        return ip.unwrap_or_default().to_string();
    }
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if matches!(field, "spec.hostNetwork" | "spec.unschedulable") => "false".to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn label_forms() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"));
        assert!(m("app"));
        assert!(!m("missing"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("app=web,tier=front"));
        assert!(!m("app=web,tier=back"));
        assert!(m("app in (db, web)"));
        assert!(m("app in (db,web),tier"));
        assert!(!m("app notin (db,web)"));
        assert!(m("missing notin (db,web)"));
        assert!(m("n>4"));
        assert!(!m("n<4"));
        assert!(!LabelSelector::parse("app=web").unwrap().matches(None));
        assert!(LabelSelector::parse("app!=web").unwrap().matches(None));
    }

    #[test]
    fn label_errors() {
        for bad in [
            "app=",
            "=x",
            "app in x",
            "app in (a",
            "app=(x)",
            "app=a b",
            ",",
        ] {
            let r = LabelSelector::parse(bad);
            if bad == "app=" {
                // An empty value is valid: it matches a label with empty value.
                assert!(r.is_ok(), "{bad}");
            } else {
                assert!(r.is_err(), "{bad} parsed as {r:?}");
            }
        }
    }

    #[test]
    fn fields() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        let m = |s: &str| FieldSelector::parse(s, "Pod").unwrap().matches(&pod);
        assert!(m("spec.nodeName=n1"));
        assert!(m("spec.nodeName==n1,metadata.namespace=ns"));
        assert!(!m("spec.nodeName!=n1"));
        assert!(m("metadata.name=a"));
        assert!(!m("metadata.name=b"));
        assert!(m("spec.hostNetwork=false"));
        assert!(m("status.phase="));
        assert!(FieldSelector::parse("spec.nodeName=x", "Service").is_err());
        assert!(FieldSelector::parse("nonsense", "Pod").is_err());
    }
}
