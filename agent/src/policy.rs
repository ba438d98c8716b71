//! Gray-release policy: canary shares, sticky keys, match rules and lane
//! modes, declared per Service (annotations, or `policy:` in the static file)
//! with cluster-wide defaults in the agent config.
//!
//! The textual forms are the same everywhere:
//!
//! | field | annotation | example |
//! |---|---|---|
//! | `canary` | `laneway.io/canary` | `gray=10` (10% of untagged requests to lane gray), `gray=5,blue=2.5` |
//! | `sticky` | `laneway.io/sticky` | `header:x-user-id` or `cookie:uid`: the same key always lands on the same side |
//! | `match` | `laneway.io/match` | `[{"header":"x-user-type","exact":"internal","tag":"gray"}]`; sources `header`, `cookie`, `query`; patterns `exact`, `prefix`, `regex` |
//! | `lanes` | `laneway.io/lanes` | `gray=strict,joint1=permissive`: a strict lane answers 503 when it has no endpoint instead of falling back to base |
//! | `allow_from` | `laneway.io/allow-from` | `namespaces=shop,checkout;lanes=gray,base`: only these callers are served ([`authz`]) |
//! | `external_lanes` | `laneway.io/external-lanes` | `dev-alice=10.8.0.5:8080`: lane dev-alice is served from outside the cluster ([`external`]) |
//! | `endpoint_pinning` | `laneway.io/endpoint-pinning` | `"true"`: header `x-laneway-endpoint` picks the endpoint ([`crate::route::pinning`]) |
//!
//! Every field parses into a checked value, so a bad annotation is found when
//! it is read, never while routing.

use std::{collections::BTreeMap, fmt, str::FromStr};

pub mod authz;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::config::Tag;
pub use authz::AllowFrom;

pub mod external;

pub use external::ExternalLanes;

/// Basis points in 100%.
pub const FULL_SHARE: u32 = 10_000;

/// Canary shares: lane and basis points (1/100 of a percent) of untagged
/// requests. They add up to at most 100%.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanaryShares(pub Vec<(Tag, u32)>);

impl FromStr for CanaryShares {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut shares = Vec::new();
        let mut total = 0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tag, pct) = part.split_once('=').ok_or_else(|| {
                format!("canary share {part:?} is not TAG=PERCENT (e.g. gray=10)")
            })?;
            let tag: Tag = tag.trim().parse()?;
            let pct: f64 = pct
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("canary share {part:?}: {pct:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("canary share {part:?}: {pct} is not within 0-100"));
            }
            let bp = (pct * 100.0).round() as u32;
            total += bp;
            if shares.iter().any(|(t, _)| *t == tag) {
                return Err(format!("canary shares name lane {tag} twice"));
            }
            shares.push((tag, bp));
        }
        if total > FULL_SHARE {
            return Err(format!(
                "canary shares add up to {}%, more than 100%",
                f64::from(total) / 100.0
            ));
        }
        Ok(Self(shares))
    }
}

impl fmt::Display for CanaryShares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(t, bp)| format!("{t}={}", f64::from(*bp) / 100.0))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Where a sticky key (or a match rule's value) is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

impl Source {
    /// The value of this source in a request, if present.
    pub fn value<'a>(&self, headers: &[(&'a str, &'a [u8])], path: &'a str) -> Option<String> {
        match self {
            Source::Header(name) => headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .map(|v| v.trim().to_owned()),
            Source::Cookie(name) => headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .filter_map(|(_, v)| std::str::from_utf8(v).ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.trim_matches('"').to_owned())
                }),
            Source::Query(name) => {
                let query = path.split_once('?')?.1;
                let query = query.split('#').next().unwrap_or(query);
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then(|| v.to_owned())
                })
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Header(n) => write!(f, "header:{n}"),
            Source::Cookie(n) => write!(f, "cookie:{n}"),
            Source::Query(n) => write!(f, "query:{n}"),
        }
    }
}

/// The sticky key: `header:NAME` or `cookie:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickyKey(pub Source);

impl FromStr for StickyKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("sticky key {s:?} is not header:NAME or cookie:NAME"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("sticky key {s:?} has no name"));
        }
        match kind.trim() {
            "header" => Ok(Self(Source::Header(name.to_ascii_lowercase()))),
            "cookie" => Ok(Self(Source::Cookie(name.to_owned()))),
            other => Err(format!("sticky key kind {other:?} is not header or cookie")),
        }
    }
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a lane behaves when it has no endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LaneMode {
    /// Fall back to base.
    #[default]
    Permissive,
    /// Answer 503 naming service and tag.
    Strict,
}

/// Lane modes by tag: `gray=strict,joint1=permissive`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneModes(pub BTreeMap<Tag, LaneMode>);

impl FromStr for LaneModes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut modes = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tag, mode) = part
                .split_once('=')
                .ok_or_else(|| format!("lane mode {part:?} is not TAG=strict or TAG=permissive"))?;
            let mode = match mode.trim() {
                "strict" => LaneMode::Strict,
                "permissive" => LaneMode::Permissive,
                other => return Err(format!("lane mode {other:?} is not strict or permissive")),
            };
            modes.insert(tag.trim().parse()?, mode);
        }
        Ok(Self(modes))
    }
}

impl fmt::Display for LaneModes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(t, m)| {
                format!(
                    "{t}={}",
                    if *m == LaneMode::Strict {
                        "strict"
                    } else {
                        "permissive"
                    }
                )
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// What a match rule compares with.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the regular expression (anywhere, unless anchored).
    Regex(regex::Regex),
}

impl Pattern {
    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(s) => value == s,
            Pattern::Prefix(s) => value.starts_with(s.as_str()),
            Pattern::Regex(r) => r.is_match(value),
        }
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Pattern::Exact(a), Pattern::Exact(b)) | (Pattern::Prefix(a), Pattern::Prefix(b)) => {
                a == b
            }
            (Pattern::Regex(a), Pattern::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// A match rule: requests whose source matches the pattern get the tag.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchRule {
    /// Where the value is read.
    pub source: Source,
    /// What it must match.
    pub pattern: Pattern,
    /// The tag it gives.
    pub tag: Tag,
}

/// The serialized form of a match rule (one source, one pattern, a tag).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MatchRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    tag: String,
}

impl TryFrom<MatchRuleSpec> for MatchRule {
    type Error = String;
    fn try_from(spec: MatchRuleSpec) -> Result<Self, String> {
        let source = match (spec.header, spec.cookie, spec.query) {
            (Some(h), None, None) => Source::Header(h.to_ascii_lowercase()),
            (None, Some(c), None) => Source::Cookie(c),
            (None, None, Some(q)) => Source::Query(q),
            _ => return Err("a match rule names exactly one of header, cookie, query".into()),
        };
        let pattern = match (spec.exact, spec.prefix, spec.regex) {
            (Some(e), None, None) => Pattern::Exact(e),
            (None, Some(p), None) => Pattern::Prefix(p),
            (None, None, Some(r)) => Pattern::Regex(
                regex::Regex::new(&r).map_err(|e| format!("match rule regex {r:?}: {e}"))?,
            ),
            _ => return Err("a match rule has exactly one of exact, prefix, regex".into()),
        };
        Ok(Self {
            source,
            pattern,
            tag: spec.tag.parse()?,
        })
    }
}

impl From<&MatchRule> for MatchRuleSpec {
    fn from(rule: &MatchRule) -> Self {
        let mut spec = MatchRuleSpec {
            tag: rule.tag.to_string(),
            ..Default::default()
        };
        match &rule.source {
            Source::Header(n) => spec.header = Some(n.clone()),
            Source::Cookie(n) => spec.cookie = Some(n.clone()),
            Source::Query(n) => spec.query = Some(n.clone()),
        }
        match &rule.pattern {
            Pattern::Exact(s) => spec.exact = Some(s.clone()),
            Pattern::Prefix(s) => spec.prefix = Some(s.clone()),
            Pattern::Regex(r) => spec.regex = Some(r.as_str().to_owned()),
        }
        spec
    }
}

impl<'de> Deserialize<'de> for MatchRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        MatchRule::try_from(MatchRuleSpec::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Serialize for MatchRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        MatchRuleSpec::from(self).serialize(s)
    }
}

macro_rules! string_serde {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
    )*};
}
string_serde!(CanaryShares, StickyKey, LaneModes, AllowFrom, ExternalLanes);

/// A policy as written: every field optional, so a Service's policy can
/// override the cluster default field by field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Canary shares of untagged requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryShares>,
    /// Sticky key for the shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKey>,
    /// Match rules, first match wins.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<MatchRule>>,
    /// Lane modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<LaneModes>,
    /// Default mode of lanes not named in `lanes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_lane_mode: Option<LaneModeName>,
    /// Slow start: a newly serving endpoint's share ramps up over this
    /// window (`laneway.io/warmup: 30s`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub warmup: Option<std::time::Duration>,
    /// Who may call the service (`laneway.io/allow-from:
    /// namespaces=shop;lanes=gray`); everyone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<AllowFrom>,
    /// Lanes served from outside the cluster
    /// (`laneway.io/external-lanes: dev-alice=10.8.0.5:8080`); a service's
    /// own field only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_lanes: Option<ExternalLanes>,
    /// Requests may pick their endpoint with `x-laneway-endpoint`
    /// (`laneway.io/endpoint-pinning: "true"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_pinning: Option<bool>,
}

/// `strict` or `permissive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneModeName {
    /// Fall back to base.
    Permissive,
    /// 503 when the lane has no endpoint.
    Strict,
}

/// The prefix of a Service's policy annotations (`laneway.io/canary`, ...).
pub const ANNOTATION_PREFIX: &str = "laneway.io/";

impl PolicySpec {
    /// The cluster-wide defaults the agent config's `policy:` starts from:
    /// slow start over 30 s (as MSE users expect), lanes permissive.
    pub fn cluster_defaults() -> Self {
        PolicySpec {
            default_lane_mode: Some(LaneModeName::Permissive),
            warmup: Some(std::time::Duration::from_secs(30)),
            ..PolicySpec::default()
        }
    }

    /// This policy with the fields it leaves out taken from `defaults`.
    pub fn over(&self, defaults: &PolicySpec) -> PolicySpec {
        PolicySpec {
            canary: self.canary.clone().or_else(|| defaults.canary.clone()),
            sticky: self.sticky.clone().or_else(|| defaults.sticky.clone()),
            matches: self.matches.clone().or_else(|| defaults.matches.clone()),
            lanes: self.lanes.clone().or_else(|| defaults.lanes.clone()),
            default_lane_mode: self.default_lane_mode.or(defaults.default_lane_mode),
            warmup: self.warmup.or(defaults.warmup),
            allow_from: self
                .allow_from
                .clone()
                .or_else(|| defaults.allow_from.clone()),
            external_lanes: self
                .external_lanes
                .clone()
                .or_else(|| defaults.external_lanes.clone()),
            endpoint_pinning: self.endpoint_pinning.or(defaults.endpoint_pinning),
        }
    }

    /// Parses the `laneway.io/*` annotations of a Service; `Ok(None)` when it
    /// has none of them.
    pub fn from_annotations<'a>(
        annotations: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Option<PolicySpec>, String> {
        let mut spec = PolicySpec::default();
        let mut any = false;
        for (key, value) in annotations {
            let field = match key.strip_prefix(ANNOTATION_PREFIX) {
                Some(f) => f,
                None => continue,
            };
            let bad = |e: String| format!("annotation {key}: {e}");
            match field {
                "canary" => spec.canary = Some(value.parse().map_err(bad)?),
                "sticky" => spec.sticky = Some(value.parse().map_err(bad)?),
                "match" => {
                    spec.matches =
                        Some(serde_yaml::from_str(value).map_err(|e| bad(e.to_string()))?)
                }
                "lanes" => spec.lanes = Some(value.parse().map_err(bad)?),
                "allow-from" => spec.allow_from = Some(value.parse().map_err(bad)?),
                "warmup" => {
                    spec.warmup = Some(
                        humantime::parse_duration(value.trim()).map_err(|e| bad(e.to_string()))?,
                    )
                }
                "default-lane-mode" => {
                    spec.default_lane_mode =
                        Some(serde_yaml::from_str(value).map_err(|e| bad(e.to_string()))?)
                }
                "external-lanes" => spec.external_lanes = Some(value.parse().map_err(bad)?),
                "endpoint-pinning" => {
                    spec.endpoint_pinning = Some(match value.trim() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(bad(format!("{other:?} is not \"true\" or \"false\"")));
                        }
                    })
                }
                _ => continue,
            }
            any = true;
        }
        Ok(any.then_some(spec))
    }
}

/// A policy in force for one service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// Canary shares.
    pub canary: CanaryShares,
    /// Sticky key.
    pub sticky: Option<StickyKey>,
    /// Match rules.
    pub matches: Vec<MatchRule>,
    /// Lane modes.
    pub lanes: LaneModes,
    /// Mode of lanes not in `lanes`.
    pub default_lane_mode: LaneMode,
    /// Slow-start window (zero: none).
    pub warmup: std::time::Duration,
    /// Who may call (`None`: everyone).
    pub allow_from: Option<AllowFrom>,
    /// Lanes served from outside the cluster.
    pub external_lanes: ExternalLanes,
    /// Requests may pick their endpoint (`x-laneway-endpoint`).
    pub endpoint_pinning: bool,
}

impl From<&PolicySpec> for Policy {
    fn from(spec: &PolicySpec) -> Self {
        Policy {
            canary: spec.canary.clone().unwrap_or_default(),
            sticky: spec.sticky.clone(),
            matches: spec.matches.clone().unwrap_or_default(),
            lanes: spec.lanes.clone().unwrap_or_default(),
            default_lane_mode: match spec.default_lane_mode {
                Some(LaneModeName::Strict) => LaneMode::Strict,
                _ => LaneMode::Permissive,
            },
            warmup: spec.warmup.unwrap_or_default(),
            allow_from: spec.allow_from.clone(),
            external_lanes: spec.external_lanes.clone().unwrap_or_default(),
            endpoint_pinning: spec.endpoint_pinning.unwrap_or(false),
        }
    }
}

impl MatchRule {
    /// What a request must have: `header:x-user-type=internal` (`^=` a
    /// prefix, `~` a regex).
    pub fn condition(&self) -> String {
        let pattern = match &self.pattern {
            Pattern::Exact(s) => format!("={s}"),
            Pattern::Prefix(s) => format!("^={s}"),
            Pattern::Regex(r) => format!("~{}", r.as_str()),
        };
        format!("{}{pattern}", self.source)
    }
}

impl fmt::Display for MatchRule {
    /// `header:x-user-type=internal->gray`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.condition(), self.tag)
    }
}

impl fmt::Display for Policy {
    /// A one-line summary: `canary gray=10; sticky header:x-user-id; ...`,
    /// or `none`: [`Policy::fields`], each as `name value`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .fields()
            .into_iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

impl Policy {
    /// The fields that differ from no policy at all, as (name, value) for
    /// people: the one-line summary (`laneway services`) and the lane map
    /// (`/lanes`) both show these.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::new();
        if !self.canary.0.is_empty() {
            fields.push(("canary", self.canary.to_string()));
        }
        if let Some(k) = &self.sticky {
            fields.push(("sticky", k.to_string()));
        }
        if !self.matches.is_empty() {
            let rules: Vec<String> = self.matches.iter().map(ToString::to_string).collect();
            fields.push(("match", rules.join(",")));
        }
        if !self.lanes.0.is_empty() {
            fields.push(("lanes", self.lanes.to_string()));
        }
        if self.default_lane_mode == LaneMode::Strict {
            fields.push(("lanes", "strict by default".to_owned()));
        }
        if !self.warmup.is_zero() {
            fields.push((
                "warmup",
                humantime::format_duration(self.warmup).to_string(),
            ));
        }
        if let Some(rule) = &self.allow_from {
            fields.push(("allow-from", rule.to_string()));
        }
        if !self.external_lanes.is_empty() {
            fields.push(("external", self.external_lanes.to_string()));
        }
        if self.endpoint_pinning {
            fields.push(("pinning", "allowed".to_owned()));
        }
        fields
    }

    /// The mode of `tag`'s lane: as `lanes` names it, else strict for an
    /// external lane (a developer wants their laptop or an error, not base),
    /// else the default mode.
    pub fn lane_mode(&self, tag: &Tag) -> LaneMode {
        match self.lanes.0.get(tag) {
            Some(mode) => *mode,
            None if !self.external_lanes.of(tag).is_empty() => LaneMode::Strict,
            None => self.default_lane_mode,
        }
    }

    /// The tags the policy names: in canary shares, match rules, lane
    /// modes and external lanes.
    pub fn named_lanes(&self) -> impl Iterator<Item = &Tag> {
        self.canary
            .0
            .iter()
            .map(|(t, _)| t)
            .chain(self.matches.iter().map(|r| &r.tag))
            .chain(self.lanes.0.keys())
            .chain(self.external_lanes.0.keys())
    }

    /// The tag of the first match rule the request matches.
    pub fn matched(&self, headers: &[(&str, &[u8])], path: &str) -> Option<(usize, &Tag)> {
        self.matches.iter().enumerate().find_map(|(i, rule)| {
            let value = rule.source.value(headers, path)?;
            rule.pattern.matches(&value).then_some((i, &rule.tag))
        })
    }

    /// The bucket (0..10000) of a request for the canary shares: a stable
    /// hash of the sticky key when there is one and the request has it,
    /// else random.
    pub fn bucket(&self, headers: &[(&str, &[u8])], path: &str, random: u32) -> (u32, bool) {
        match self.sticky.as_ref().and_then(|k| k.0.value(headers, path)) {
            Some(key) => (fnv1a(key.as_bytes()) % FULL_SHARE, true),
            None => (random % FULL_SHARE, false),
        }
    }

    /// The canary lane bucket `b` falls into, if any.
    pub fn canary_lane(&self, bucket: u32) -> Option<&Tag> {
        let mut upper = 0;
        for (tag, share) in &self.canary.0 {
            upper += share;
            if bucket < upper {
                return Some(tag);
            }
        }
        None
    }
}

/// FNV-1a: a stable hash (the same in every agent and every release), so a
/// sticky key lands on the same side on every node.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> Tag {
        s.parse().expect("tag")
    }

    #[test]
    fn canary_shares_parse_and_add_up() {
        let c: CanaryShares = "gray=10, blue=2.5%".parse().expect("valid");
        assert_eq!(c.0, vec![(tag("gray"), 1000), (tag("blue"), 250)]);
        assert_eq!(c.to_string(), "gray=10,blue=2.5");
        assert!(
            "gray=60,blue=50"
                .parse::<CanaryShares>()
                .unwrap_err()
                .contains("more than 100%")
        );
        assert!(
            "gray"
                .parse::<CanaryShares>()
                .unwrap_err()
                .contains("TAG=PERCENT")
        );
        assert!(
            "gray=x"
                .parse::<CanaryShares>()
                .unwrap_err()
                .contains("not a percentage")
        );
        assert!(
            "gray=1,gray=2"
                .parse::<CanaryShares>()
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn sticky_keys_and_lane_modes_parse() {
        assert_eq!(
            "header:X-User".parse::<StickyKey>(),
            Ok(StickyKey(Source::Header("x-user".into())))
        );
        assert_eq!(
            "cookie:uid".parse::<StickyKey>(),
            Ok(StickyKey(Source::Cookie("uid".into())))
        );
        assert!("query:x".parse::<StickyKey>().is_err());
        let m: LaneModes = "gray=strict,joint1=permissive".parse().expect("valid");
        assert_eq!(m.0[&tag("gray")], LaneMode::Strict);
        assert!("gray=sometimes".parse::<LaneModes>().is_err());
    }

    #[test]
    fn match_rules_read_headers_cookies_and_query() {
        let rules: Vec<MatchRule> = serde_yaml::from_str(
            r#"[{"header":"x-user-type","exact":"internal","tag":"gray"},
                {"cookie":"beta","prefix":"yes","tag":"blue"},
                {"query":"lane","regex":"^g[0-9]+$","tag":"green"}]"#,
        )
        .expect("valid");
        let policy = Policy {
            matches: rules,
            ..Default::default()
        };
        let h = |pairs: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static [u8])> {
            pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
        };
        assert_eq!(
            policy
                .matched(&h(&[("X-User-Type", "internal")]), "/")
                .map(|m| m.1.as_str()),
            Some("gray")
        );
        assert_eq!(
            policy.matched(&h(&[("x-user-type", "external")]), "/"),
            None
        );
        assert_eq!(
            policy
                .matched(&h(&[("cookie", "a=1; beta=yes-please")]), "/")
                .map(|m| m.1.as_str()),
            Some("blue")
        );
        assert_eq!(
            policy
                .matched(&h(&[]), "/p?x=1&lane=g42")
                .map(|m| m.1.as_str()),
            Some("green")
        );
        assert_eq!(policy.matched(&h(&[]), "/p?lane=gx"), None);
        let bad: Result<Vec<MatchRule>, _> =
            serde_yaml::from_str(r#"[{"header":"a","cookie":"b","exact":"x","tag":"t"}]"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("exactly one of header")
        );
        let bad: Result<Vec<MatchRule>, _> =
            serde_yaml::from_str(r#"[{"header":"a","regex":"(","tag":"t"}]"#);
        assert!(bad.unwrap_err().to_string().contains("regex"));
    }

    #[test]
    fn buckets_are_sticky_and_shares_partition_them() {
        let policy = Policy::from(&PolicySpec {
            canary: Some("gray=10,blue=5".parse().expect("valid")),
            sticky: Some("header:x-user-id".parse().expect("valid")),
            ..Default::default()
        });
        let user = [("x-user-id", b"alice".as_slice())];
        let (b1, sticky) = policy.bucket(&user, "/", 1);
        let (b2, _) = policy.bucket(&user, "/", 9_999);
        assert!(sticky);
        assert_eq!(b1, b2, "same key, same bucket, whatever the random");
        assert_eq!(policy.canary_lane(0).map(Tag::as_str), Some("gray"));
        assert_eq!(policy.canary_lane(999).map(Tag::as_str), Some("gray"));
        assert_eq!(policy.canary_lane(1000).map(Tag::as_str), Some("blue"));
        assert_eq!(policy.canary_lane(1500), None);
        assert_eq!(policy.bucket(&[], "/", 12_345), (2_345, false));
    }

    #[test]
    fn annotations_parse_and_name_the_bad_one() {
        let ok = PolicySpec::from_annotations(
            [
                ("laneway.io/canary", "gray=20"),
                ("laneway.io/lanes", "gray=strict"),
                ("other", "x"),
            ]
            .into_iter(),
        )
        .expect("valid")
        .expect("some");
        assert_eq!(ok.canary.expect("canary").0[0].1, 2000);
        assert_eq!(
            PolicySpec::from_annotations([("app", "x")].into_iter()),
            Ok(None)
        );
        let e = PolicySpec::from_annotations([("laneway.io/canary", "gray=200")].into_iter())
            .unwrap_err();
        assert!(
            e.contains("laneway.io/canary") && e.contains("0-100"),
            "{e}"
        );
    }

    #[test]
    fn the_allow_from_annotation_parses_and_a_bad_one_names_annotation_and_part() {
        let spec = PolicySpec::from_annotations(
            [("laneway.io/allow-from", "namespaces=shop")].into_iter(),
        )
        .expect("valid")
        .expect("some");
        let policy = Policy::from(&spec);
        assert_eq!(policy.to_string(), "allow-from namespaces=shop");
        let e = PolicySpec::from_annotations(
            [("laneway.io/allow-from", "namespaces=shop;pods=web")].into_iter(),
        )
        .unwrap_err();
        assert!(
            e.contains("annotation laneway.io/allow-from") && e.contains("\"pods\""),
            "{e}"
        );
    }

    #[test]
    fn external_lanes_and_pinning_annotations_parse_and_name_the_bad_part() {
        let spec = PolicySpec::from_annotations(
            [
                ("laneway.io/external-lanes", "dev-alice=10.8.0.5:8080"),
                ("laneway.io/endpoint-pinning", "true"),
            ]
            .into_iter(),
        )
        .expect("valid")
        .expect("some");
        let policy = Policy::from(&spec);
        assert!(policy.endpoint_pinning);
        assert_eq!(policy.external_lanes.of(&tag("dev-alice")).len(), 1);
        assert_eq!(
            policy.to_string(),
            "external dev-alice=10.8.0.5:8080; pinning allowed"
        );
        let e = PolicySpec::from_annotations(
            [("laneway.io/external-lanes", "dev-alice=10.8.0.5")].into_iter(),
        )
        .unwrap_err();
        assert!(
            e.contains("laneway.io/external-lanes") && e.contains("\"10.8.0.5\" is not IP:PORT"),
            "{e}"
        );
        let e = PolicySpec::from_annotations([("laneway.io/endpoint-pinning", "yes")].into_iter())
            .unwrap_err();
        assert!(
            e.contains("laneway.io/endpoint-pinning") && e.contains("\"yes\""),
            "{e}"
        );
        // The file's form is the same field.
        let file: PolicySpec = serde_yaml::from_str(
            "{external_lanes: 'dev-alice=[fd00::5]:8080', endpoint_pinning: true}",
        )
        .expect("valid");
        assert_eq!(file.endpoint_pinning, Some(true));
        assert!(file.external_lanes.is_some());
    }

    #[test]
    fn an_external_lane_is_strict_unless_lanes_says_permissive() {
        let strict = policy_of("{external_lanes: 'dev=10.8.0.5:80'}");
        assert_eq!(strict.lane_mode(&tag("dev")), LaneMode::Strict);
        assert_eq!(strict.lane_mode(&tag("other")), LaneMode::Permissive);
        let permissive = policy_of("{external_lanes: 'dev=10.8.0.5:80', lanes: dev=permissive}");
        assert_eq!(permissive.lane_mode(&tag("dev")), LaneMode::Permissive);
    }

    fn policy_of(yaml: &str) -> Policy {
        Policy::from(&serde_yaml::from_str::<PolicySpec>(yaml).expect("valid"))
    }
    #[test]
    fn service_policy_overrides_defaults_field_by_field() {
        let defaults = PolicySpec {
            canary: Some("gray=5".parse().expect("valid")),
            lanes: Some("gray=strict".parse().expect("valid")),
            ..Default::default()
        };
        let service = PolicySpec {
            canary: Some("gray=50".parse().expect("valid")),
            ..Default::default()
        };
        let merged = Policy::from(&service.over(&defaults));
        assert_eq!(merged.canary.0[0].1, 5000);
        assert_eq!(merged.lane_mode(&tag("gray")), LaneMode::Strict);
        assert_eq!(merged.lane_mode(&tag("other")), LaneMode::Permissive);
    }
}
