//! The lane map: a read-only page at `/ui` on `admin.listen`, beside
//! `/metrics` and under the same rule (whoever reaches that address may
//! read it; it binds to 127.0.0.1 by default). Plain HTML, CSS and a little
//! JavaScript, embedded in the binary: nothing is fetched from elsewhere and
//! nothing is built. The page polls `/lanes` ([`super::api::LaneMap`]) every
//! 2 s and computes request rates from successive counters.

/// A file of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its `content-type`.
    pub content_type: &'static str,
    /// Its text.
    pub body: &'static str,
}

/// The page's file at `path`, if it is one.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/ui" | "/ui/" | "/ui/index.html" => {
            ("text/html; charset=utf-8", include_str!("ui/index.html"))
        }
        "/ui/app.js" => ("text/javascript; charset=utf-8", include_str!("ui/app.js")),
        "/ui/style.css" => ("text/css; charset=utf-8", include_str!("ui/style.css")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// Headers the page's files carry: they load only from the agent itself
/// (no inline script, nothing from elsewhere), are not framed, and are
/// fetched again after an upgrade of the agent.
pub const HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-cache"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_what_it_loads_are_served() {
        let page = asset("/ui").expect("the page");
        assert!(page.content_type.starts_with("text/html"));
        // Every file the page names is served, and nothing from elsewhere.
        for file in ["/ui/app.js", "/ui/style.css"] {
            assert!(page.body.contains(&format!("\"{file}\"")), "{file}");
            assert!(asset(file).is_some(), "{file}");
        }
        assert!(!page.body.contains("http://") && !page.body.contains("https://"));
        assert!(
            asset("/ui/app.js")
                .expect("js")
                .body
                .contains("fetch(\"/lanes\"")
        );
        assert_eq!(asset("/ui/nothing"), None);
    }
}
