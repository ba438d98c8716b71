//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`): each takes
//! arbitrary bytes, drives one parser of untrusted input, and panics only
//! when an invariant breaks.

use crate::{
    config::Config,
    proxy::{
        Target,
        h1::{body::ChunkedDecoder, head},
    },
    route,
    snapshot::TagRules,
};

/// A request head: parse, check framing, and re-serialise it as the router
/// would; the rewritten head must parse again with the same method and path.
pub fn request_head(data: &[u8]) {
    let Some(end) = head::find_head_end(data, 0) else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&data[..end]), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let Ok(info) = head::analyze_request(&req) else {
        return;
    };
    let target = Target {
        endpoint: std::net::SocketAddr::from(([127, 0, 0, 1], 80)),
        tag_header: "x-mse-tag".to_owned(),
        tag: Some("lane".to_owned()),
        baggage: Some("k=v".to_owned()),
        route_header: None,
    };
    let mut out = Vec::new();
    head::write_request_head(&mut out, &req, &target, info.upgrade);
    head::finish_request_head(&mut out, &target);
    let mut again = [httparse::EMPTY_HEADER; head::MAX_HEADERS + 2];
    let mut parsed = httparse::Request::new(&mut again);
    assert!(
        matches!(parsed.parse(&out), Ok(httparse::Status::Complete(_))),
        "the rewritten head does not parse: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(parsed.method, req.method);
    assert_eq!(parsed.path, req.path);
}

/// A chunked body: fed whole or in pieces (split by the first byte), the
/// decoder must agree on where the body ends, or that it is invalid.
pub fn chunked(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let mut whole = ChunkedDecoder::new();
    let whole_result = whole.feed(body).map(|n| (n, whole.is_done()));
    let step = usize::from(split % 7) + 1;
    let mut pieces = ChunkedDecoder::new();
    let mut used = 0;
    let mut pieces_result = Ok((0, false));
    for piece in body.chunks(step) {
        match pieces.feed(piece) {
            Ok(n) => {
                used += n;
                if pieces.is_done() || n < piece.len() {
                    break;
                }
            }
            Err(e) => {
                pieces_result = Err(e);
                break;
            }
        }
    }
    if pieces_result.is_ok() {
        pieces_result = Ok((used, pieces.is_done()));
    }
    match (whole_result, pieces_result) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "whole and piecewise decoding disagree"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("whole {a:?} vs piecewise {b:?}"),
    }
}

/// Tag headers and baggage: resolving never panics and yields only valid
/// tags, and with an allowlist only allowed ones.
pub fn tags(data: &[u8]) {
    let open = TagRules {
        headers: vec!["x-mse-tag".into()],
        baggage_key: "x-mse-tag".into(),
        inherit_caller_tag: true,
        allowed: Vec::new(),
        strip_from_unknown_callers: true,
    };
    let limited = TagRules {
        allowed: vec![
            "gray".parse().expect("a valid tag"),
            "joint1".parse().expect("a valid tag"),
        ],
        ..open.clone()
    };
    let (first, second) = data.split_at(data.len() / 2);
    let headers = [("x-mse-tag", first), ("baggage", second)];
    for rules in [&open, &limited] {
        let resolved = route::resolve_tag(headers.into_iter(), None, rules);
        if let Some(tag) = resolved.tag {
            assert!(tag.as_str().parse::<crate::config::Tag>().is_ok());
            assert!(
                rules.allowed.is_empty() || rules.allowed.contains(&tag),
                "{tag} is not in the allowlist"
            );
        }
    }
    let _ = route::propagated_baggage(headers.into_iter(), "x-mse-tag", None);
}

/// The config loader: any text is either a config or an error message.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(config) = Config::parse(text)
    {
        // What parses dumps and parses again.
        let dumped = serde_yaml::to_string(&config).expect("a parsed config serializes");
        assert!(
            Config::parse(&dumped).is_ok(),
            "dump does not parse:\n{dumped}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass() {
        request_head(b"GET /a?b HTTP/1.1\r\nhost: x\r\nx-mse-tag: old\r\nbaggage: a=b\r\n\r\n");
        chunked(b"\x035\r\nhello\r\n0\r\nx: y\r\n\r\n");
        chunked(b"\x01zz\r\n");
        tags(b"joint1x-mse-tag=gray");
        tags(b"blue00x-mse-tag=joint1");
        config(b"services: []\n");
        config(b"\x00\xff");
    }
}
