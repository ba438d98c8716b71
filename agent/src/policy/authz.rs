//! Caller authorization: who may call a service (`laneway.io/allow-from`,
//! or `allow_from` in a policy of the static file).
//!
//! The caller is the enrolled pod the router identified for the
//! connection: by the netns cookie in laneway's kernel record of it
//! (socket mode), else by the source address of a completed TCP handshake
//! from a pod of this node (TC mode's transparent listener, a REDIRECT).
//! Nothing in a request names it, so a header cannot claim another
//! identity.
//!
//! The written form is one or two conditions separated by `;`, each a key
//! and a comma-separated list; a caller must meet every condition given
//! (any entry of each list):
//!
//! | condition | meaning |
//! |---|---|
//! | `namespaces=shop,checkout` | the calling pod's namespace is one of these |
//! | `lanes=gray,base` | the calling pod's own lane (its tag label) is one of these; `base` is a pod without a tag |
//!
//! E.g. `namespaces=shop;lanes=gray`. A caller that is no enrolled pod of
//! this node (a node process, a hostNetwork or unenrolled pod reaching
//! the router) meets no condition: denied wherever a rule exists.

use std::{collections::BTreeSet, fmt, str::FromStr};

use crate::{
    config::{Name, Tag},
    snapshot::Pod,
};

/// The lane name that stands for pods without a tag.
const BASE: &str = "base";

/// Who may call a service. At least one condition is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowFrom {
    /// The caller's namespace is one of these (`None`: any).
    namespaces: Option<BTreeSet<Name>>,
    /// The caller's own lane is one of these, `None` in the set standing
    /// for base (`None`: any).
    lanes: Option<BTreeSet<Option<Tag>>>,
}

/// Why a caller is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The caller is no enrolled pod of this node.
    NotEnrolled,
    /// The caller's namespace is not listed.
    Namespace(String),
    /// The caller's lane is not listed (`None`: base).
    Lane(Option<Tag>),
}

impl FromStr for AllowFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut rule = AllowFrom {
            namespaces: None,
            lanes: None,
        };
        for condition in s.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (key, list) = condition.split_once('=').ok_or_else(|| {
                format!("condition {condition:?} is not namespaces=NS,... or lanes=LANE,...")
            })?;
            let entries: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect();
            if entries.is_empty() {
                return Err(format!("condition {condition:?} lists nothing"));
            }
            let twice = || format!("{} is given twice", key.trim());
            match key.trim() {
                "namespaces" => {
                    let names = entries
                        .iter()
                        .map(|e| {
                            e.parse::<Name>()
                                .map_err(|err| format!("namespaces: {err}"))
                        })
                        .collect::<Result<_, _>>()?;
                    if rule.namespaces.replace(names).is_some() {
                        return Err(twice());
                    }
                }
                "lanes" => {
                    let lanes = entries
                        .iter()
                        .map(|&e| match e {
                            BASE => Ok(None),
                            tag => tag.parse().map(Some).map_err(|err| format!("lanes: {err}")),
                        })
                        .collect::<Result<_, _>>()?;
                    if rule.lanes.replace(lanes).is_some() {
                        return Err(twice());
                    }
                }
                other => {
                    return Err(format!(
                        "unknown condition {other:?}: use namespaces=NS,... and/or lanes=LANE,..."
                    ));
                }
            }
        }
        if rule.namespaces.is_none() && rule.lanes.is_none() {
            return Err("allows nobody: give namespaces=NS,... and/or lanes=LANE,...".into());
        }
        Ok(rule)
    }
}

impl fmt::Display for AllowFrom {
    /// The written form, conditions and entries in a fixed order:
    /// `namespaces=checkout,shop;lanes=base,gray`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut conditions = Vec::new();
        if let Some(namespaces) = &self.namespaces {
            let names: Vec<&str> = namespaces.iter().map(Name::as_str).collect();
            conditions.push(format!("namespaces={}", names.join(",")));
        }
        if let Some(lanes) = &self.lanes {
            let names: Vec<&str> = lanes.iter().map(|l| lane_name(l.as_ref())).collect();
            conditions.push(format!("lanes={}", names.join(",")));
        }
        f.write_str(&conditions.join(";"))
    }
}

impl AllowFrom {
    /// Whether `caller` (the enrolled pod identified for the connection,
    /// `None` when it is none) may call: `Err` says which condition it
    /// fails.
    pub fn check(&self, caller: Option<&Pod>) -> Result<(), Denial> {
        let caller = caller.ok_or(Denial::NotEnrolled)?;
        if let Some(namespaces) = &self.namespaces
            && !namespaces.iter().any(|n| n.as_str() == caller.namespace)
        {
            return Err(Denial::Namespace(caller.namespace.clone()));
        }
        if let Some(lanes) = &self.lanes
            && !lanes.contains(&caller.tag)
        {
            return Err(Denial::Lane(caller.tag.clone()));
        }
        Ok(())
    }
}

impl Denial {
    /// What the router answers a refused caller (named `caller`: the pod,
    /// else its address) of `service` under `rule`.
    pub fn message(&self, caller: &str, service: &str, rule: &AllowFrom) -> String {
        let why = match self {
            Denial::NotEnrolled => "it is no enrolled pod of this node".to_owned(),
            Denial::Namespace(ns) => format!("its namespace {ns} is not listed"),
            Denial::Lane(lane) => format!("its lane {} is not listed", lane_name(lane.as_ref())),
        };
        format!(
            "laneway: caller {caller} may not call service {service} (allow-from {rule}): {why}"
        )
    }
}

/// A lane's name in a rule: the tag, or `base`.
fn lane_name(lane: Option<&Tag>) -> &str {
    lane.map_or(BASE, Tag::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, tag: Option<&str>) -> Pod {
        Pod {
            namespace: namespace.into(),
            name: "client".into(),
            tag: tag.map(|t| t.parse().expect("tag")),
            netns: "/x".into(),
            ips: Vec::new(),
            interface: None,
        }
    }

    #[test]
    fn rules_parse_and_print_in_a_fixed_order() {
        let rule: AllowFrom = " lanes = gray, base ; namespaces=shop,checkout "
            .parse()
            .expect("valid");
        assert_eq!(rule.to_string(), "namespaces=checkout,shop;lanes=base,gray");
        assert_eq!(rule.to_string().parse::<AllowFrom>(), Ok(rule));
        let one: AllowFrom = "namespaces=shop".parse().expect("valid");
        assert_eq!(one.to_string(), "namespaces=shop");
    }

    #[test]
    fn bad_rules_name_the_bad_part() {
        for (bad, says) in [
            ("", "allows nobody"),
            (" ; ", "allows nobody"),
            ("namespaces", "\"namespaces\" is not namespaces=NS"),
            ("namespaces=", "lists nothing"),
            ("namespaces=Shop", "namespaces: invalid name \"Shop\""),
            ("lanes=gray!", "lanes: invalid tag \"gray!\""),
            ("pods=a", "unknown condition \"pods\""),
            ("namespaces=a;namespaces=b", "namespaces is given twice"),
        ] {
            let e = bad.parse::<AllowFrom>().expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_caller_must_meet_every_condition_given() {
        let rule: AllowFrom = "namespaces=shop,checkout;lanes=gray,base"
            .parse()
            .expect("valid");
        assert_eq!(rule.check(Some(&pod("shop", None))), Ok(()));
        assert_eq!(rule.check(Some(&pod("checkout", Some("gray")))), Ok(()));
        assert_eq!(
            rule.check(Some(&pod("default", None))),
            Err(Denial::Namespace("default".into()))
        );
        assert_eq!(
            rule.check(Some(&pod("shop", Some("joint1")))),
            Err(Denial::Lane(Some("joint1".parse().expect("tag"))))
        );
        assert_eq!(rule.check(None), Err(Denial::NotEnrolled));
        let lanes_only: AllowFrom = "lanes=base".parse().expect("valid");
        assert_eq!(lanes_only.check(Some(&pod("anywhere", None))), Ok(()));
        assert_eq!(
            lanes_only.check(Some(&pod("anywhere", Some("gray")))),
            Err(Denial::Lane(Some("gray".parse().expect("tag"))))
        );
    }

    #[test]
    fn the_message_names_caller_service_rule_and_reason() {
        let rule: AllowFrom = "namespaces=shop".parse().expect("valid");
        let denial = rule.check(Some(&pod("default", None))).expect_err("denied");
        assert_eq!(
            denial.message("default/client", "backends/reviews", &rule),
            "laneway: caller default/client may not call service backends/reviews \
             (allow-from namespaces=shop): its namespace default is not listed"
        );
        assert!(
            Denial::NotEnrolled
                .message("10.0.0.9", "backends/reviews", &rule)
                .ends_with("it is no enrolled pod of this node")
        );
    }
}
